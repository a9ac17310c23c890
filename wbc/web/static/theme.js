// Day/dark theme before the first paint: the remembered choice, else the system's preference.
(function () {
  var theme = null;
  try { theme = window.localStorage.getItem("wbc-theme"); } catch (e) { theme = null; }
  if (theme !== "dark" && theme !== "light") {
    theme = window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
  }
  document.documentElement.setAttribute("data-theme", theme);
})();
