"""A blind user study of LoRA against textual inversion (study S4), run from a static page.

``kit`` builds the page and its key from a folder of images, ``shuffle`` is the Python twin of
the page's per-participant order, ``answers`` reads and checks the answer files the page saves,
``lora_core.metrics.proportions`` holds the interval, test and power computations, ``analysis`` the per-question tables
and ``s4`` what S4's reported numbers support. Command line: ``python -m lora_core.user_study``.
"""
