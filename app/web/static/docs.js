// Starts Swagger UI on /docs (an external file, so the page needs no inline script).
"use strict";
window.addEventListener("load", () => {
  const el = document.getElementById("openapi");
  window.ui = SwaggerUIBundle({
    url: el.dataset.specUrl,
    configUrl: el.dataset.configUrl,
    dom_id: "#openapi",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    plugins: [SwaggerUIBundle.plugins.DownloadUrl],
    layout: "StandaloneLayout",
    validatorUrl: null, // the default badge would call validator.swagger.io
  });
});
