// Refreshes the live part of the status page every second from /status
// (HTML rendered by the CHN); a lost connection shows, and a lapsed login
// goes back to the form.
(function () {
  const live = document.getElementById("live");
  const pulse = document.getElementById("pulse");
  let failures = 0;
  async function refresh() {
    try {
      const r = await fetch("/status", { credentials: "same-origin", cache: "no-store" });
      if (r.status === 401) { window.location.assign("/login"); return; }
      if (!r.ok) throw new Error("HTTP " + r.status);
      live.innerHTML = await r.text();
      failures = 0;
      pulse.textContent = "live";
      pulse.className = "pulse ok";
      document.body.dataset.updated = String(Date.now());
    } catch (e) {
      failures += 1;
      pulse.textContent = failures > 2 ? "connection lost" : "retrying";
      pulse.className = "pulse stale";
    }
  }
  setInterval(refresh, 1000);
})();
