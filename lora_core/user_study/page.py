"""The study page: one self-contained HTML file (inline CSS and JavaScript, no framework).

The page reads its trials from a JSON block embedded in itself (a ``file://`` page cannot load a
JSON file), shows the images from the kit's ``images/`` folder, and saves the answers as a
JSON file the participant downloads (a Blob link). It makes no network request of any kind; a
Content-Security-Policy with ``connect-src 'none'`` makes sure of it. Its JavaScript shuffle is
the twin of :mod:`lora_core.user_study.shuffle`.

>>> html = render_page({"page_version": "v", "kit_id": "k", "trials": [], "images": {}})
>>> html.startswith("<!DOCTYPE html>"), "http" in html.replace("http-equiv", "")
(True, False)
"""
from __future__ import annotations

import html
import json
import re
from typing import Any, Mapping

from lora_core.user_study.design import QUESTIONS

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 1rem auto; padding: 0 1rem;
       line-height: 1.5; color: #1a1a1a; background: #fff; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.25rem; }
h2:focus { outline: none; }
.pictures { display: grid; grid-template-columns: repeat(3, 1fr); gap: 1rem; margin: 1rem 0; }
figure { margin: 0; text-align: center; }
figure img { width: 100%; max-width: 16rem; height: auto; border: 1px solid #888; }
img.small { image-rendering: pixelated; }
figcaption { font-weight: bold; font-size: 1.1rem; }
fieldset { margin: 0 0 1rem; border: 1px solid #888; }
legend { font-weight: bold; padding: 0 0.3rem; }
label { display: inline-block; margin: 0.2rem 1.2rem 0.2rem 0; padding: 0.2rem; }
input, button, textarea { font: inherit; }
button, #download { padding: 0.4rem 1rem; }
:focus-visible { outline: 3px solid #1558d6; outline-offset: 2px; }
.error { color: #b00020; font-weight: bold; }
textarea { width: 100%; height: 8rem; }
"""

SCRIPT = """
(function () {
  "use strict";
  var kit = JSON.parse(document.getElementById("kit-data").textContent);
  var CODE_PATTERN = /^[A-Za-z0-9_-]{1,32}$/;
  var state = null;

  function byId(id) { return document.getElementById(id); }

  /* 32-bit FNV-1a over character codes; the Python twin is shuffle.fnv1a32. */
  function hashCode(text) {
    var value = 0x811c9dc5;
    for (var i = 0; i < text.length; i++) {
      value = Math.imul(value ^ text.charCodeAt(i), 0x01000193) >>> 0;
    }
    return value >>> 0;
  }

  /* mulberry32: floats u / 2^32 in [0, 1); the Python twin is shuffle.mulberry32. */
  function mulberry32(seed) {
    var a = seed >>> 0;
    return function () {
      a = (a + 0x6d2b79f5) >>> 0;
      var t = Math.imul(a ^ (a >>> 15), a | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }

  /* Fisher-Yates over the trials sorted by id, then one draw per trial for A/B. */
  function trialOrder(code) {
    var draw = mulberry32(hashCode(kit.kit_id + ":" + code));
    var trials = kit.trials.slice().sort(function (x, y) { return x.id < y.id ? -1 : (x.id > y.id ? 1 : 0); });
    for (var i = trials.length - 1; i > 0; i--) {
      var j = Math.floor(draw() * (i + 1));
      var held = trials[i]; trials[i] = trials[j]; trials[j] = held;
    }
    return trials.map(function (trial) {
      var keep = draw() < 0.5;
      return {trial: trial.id, original: trial.original,
              A: keep ? trial.candidates[0] : trial.candidates[1],
              B: keep ? trial.candidates[1] : trial.candidates[0]};
    });
  }

  function show(sectionId) {
    ["intro", "trial", "done"].forEach(function (id) { byId(id).hidden = id !== sectionId; });
    byId(sectionId).querySelector("h2").focus();
  }

  function setImage(img, imageId, alt) {
    var info = kit.images[imageId];
    img.src = info.src; img.alt = alt;
    img.className = info.width < 128 ? "small" : "";
    img.setAttribute("data-image-id", imageId);
  }

  function showTrial() {
    var shown = state.order[state.index];
    byId("trial-heading").textContent = "Set " + (state.index + 1) + " of " + state.order.length;
    setImage(byId("picture-original"), shown.original, "Original");
    setImage(byId("picture-a"), shown.A, "Picture A");
    setImage(byId("picture-b"), shown.B, "Picture B");
    byId("trial-form").reset();
    byId("trial-error").textContent = "";
    show("trial");
  }

  function chosen(form, name) {
    var input = form.querySelector('input[name="' + name + '"]:checked');
    return input ? input.value : null;
  }

  function recordAnswer(shown, form) {
    var buy = chosen(form, "buy"), style = chosen(form, "style"), seen = chosen(form, "recognisable");
    if (!buy || !style || !seen) { return false; }
    var recognised = {both: [shown.A, shown.B], A: [shown.A], B: [shown.B], neither: []}[seen];
    state.answers.push({trial: shown.trial, buy: shown[buy], style: shown[style], recognisable: recognised});
    return true;
  }

  function finish() {
    var shownIds = [];
    state.order.forEach(function (s) { shownIds.push(s.original, s.A, s.B); });
    var result = {page_version: kit.page_version, kit_id: kit.kit_id, participant_code: state.code,
                  image_ids: Object.keys(kit.images).sort(), order: state.order, shown: shownIds,
                  answers: state.answers};
    var text = JSON.stringify(result, null, 2) + "\\n";
    var link = byId("download");
    link.href = URL.createObjectURL(new Blob([text], {type: "application/json"}));
    link.download = "answers-" + state.code + ".json";
    byId("answers-text").value = text;
    show("done");
  }

  byId("intro-form").addEventListener("submit", function (event) {
    event.preventDefault();
    var code = byId("code").value.trim();
    if (!CODE_PATTERN.test(code)) {
      byId("code-error").textContent = "Please enter the code you were given (letters, digits, - or _).";
      byId("code").focus();
      return;
    }
    state = {code: code, order: trialOrder(code), index: 0, answers: []};
    showTrial();
  });

  byId("trial-form").addEventListener("submit", function (event) {
    event.preventDefault();
    if (!recordAnswer(state.order[state.index], event.target)) {
      byId("trial-error").textContent = "Please answer all three questions.";
      return;
    }
    state.index += 1;
    if (state.index < state.order.length) { showTrial(); } else { finish(); }
  });

  window.userStudy = {hashCode: hashCode, mulberry32: mulberry32, trialOrder: trialOrder};
})();
"""

# img-src names file: too: browsers differ on whether 'self' covers a page's folder on file://.
POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' file:; "
          "connect-src 'none'; form-action 'none'; base-uri 'none'")

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="__POLICY__">
<title>Picture study</title>
<style>__STYLE__</style>
</head>
<body>
<main>
<h1>Picture study</h1>
<noscript><p class="error">This page needs JavaScript. It runs only in your browser and sends
nothing anywhere.</p></noscript>
<section id="intro" aria-labelledby="intro-heading">
<h2 id="intro-heading" tabindex="-1">Instructions</h2>
<p>You will see __N_SETS__ sets of pictures. Each set shows an original picture and two other
versions of it, <strong>A</strong> and <strong>B</strong>. For each set, answer three questions.
There are no right or wrong answers, except in a few check sets where the answer is obvious.</p>
<p>We ask nothing about you. Enter the participant code you were given. Nothing is sent anywhere:
at the end you download your answers as a file and send it to the person who runs the study.</p>
<form id="intro-form" novalidate>
<label for="code">Participant code</label>
<input id="code" name="code" type="text" autocomplete="off" spellcheck="false" maxlength="32"
       aria-describedby="code-error" required>
<button type="submit" id="start">Start</button>
<p id="code-error" class="error" aria-live="polite"></p>
</form>
</section>
<section id="trial" aria-labelledby="trial-heading" hidden>
<h2 id="trial-heading" tabindex="-1">Set</h2>
<div class="pictures">
<figure><img id="picture-original" alt=""><figcaption>Original</figcaption></figure>
<figure><img id="picture-a" alt=""><figcaption>A</figcaption></figure>
<figure><img id="picture-b" alt=""><figcaption>B</figcaption></figure>
</div>
<form id="trial-form">
__QUESTIONS__
<button type="submit" id="next">Next</button>
<p id="trial-error" class="error" aria-live="polite"></p>
</form>
</section>
<section id="done" aria-labelledby="done-heading" hidden>
<h2 id="done-heading" tabindex="-1">Thank you</h2>
<p>Download your answers and send the file to the person who runs the study.</p>
<p><a id="download" href="#">Download your answers</a></p>
<label for="answers-text">Your answers (you can also copy this text and send it)</label>
<textarea id="answers-text" readonly></textarea>
</section>
</main>
<script type="application/json" id="kit-data">__KIT__</script>
<script>__SCRIPT__</script>
</body>
</html>
"""


def question_fieldsets() -> str:
    """One fieldset of radio buttons per question; the first option is ``required`` so the browser
    itself (and its screen-reader message) stops a set from being submitted half answered."""
    blocks = []
    for question in QUESTIONS:
        options = []
        for index, (value, label) in enumerate(question.options):
            input_id = f"{question.id}-{value}"
            required = " required" if index == 0 else ""
            options.append(f'<label for="{input_id}"><input type="radio" id="{input_id}" name="{question.id}" '
                           f'value="{value}"{required}> {html.escape(label)}</label>')
        blocks.append(f"<fieldset><legend>{html.escape(question.text)}</legend>\n" + "\n".join(options)
                      + "\n</fieldset>")
    return "\n".join(blocks)


def embedded_json(data: Mapping[str, Any]) -> str:
    """``data`` as JSON that is safe inside a ``<script>`` element (no ``</`` can close it early)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":")).replace("</", "<\\/")


def render_page(page_data: Mapping[str, Any]) -> str:
    """The page's HTML for the blind part of a kit's manifest (trials, images, ids; no methods)."""
    replacements = {"__POLICY__": POLICY, "__STYLE__": STYLE, "__N_SETS__": str(len(page_data["trials"])),
                    "__QUESTIONS__": question_fieldsets(), "__KIT__": embedded_json(page_data),
                    "__SCRIPT__": SCRIPT}
    # One pass, so a placeholder-like string inside an inserted value is never replaced again.
    return re.sub(r"__[A-Z_]+__", lambda match: replacements[match.group(0)], TEMPLATE)
