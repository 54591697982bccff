// Render the formulas pymdownx.arithmatex (generic mode) leaves in the page: inline \( ... \) in
// <span class="arithmatex">, display \[ ... \] in <div class="arithmatex">. KaTeX is vendored in
// javascripts/katex/, so no request leaves the site.
(function () {
  function render(root) {
    root.querySelectorAll(".arithmatex").forEach(function (el) {
      renderMathInElement(el, {
        delimiters: [
          { left: "\\(", right: "\\)", display: false },
          { left: "\\[", right: "\\]", display: true },
        ],
        throwOnError: false,
      });
    });
  }
  if (typeof document$ !== "undefined") {
    document$.subscribe(function () { render(document.body); });  // Material's page-load stream
  } else {
    document.addEventListener("DOMContentLoaded", function () { render(document.body); });
  }
})();
