// The API page: Swagger UI from local files (fastapi-offline's copy), reading /openapi.json.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  if (typeof window.SwaggerUIBundle !== "function") return; // the fallback text stays
  window.SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true });
});
