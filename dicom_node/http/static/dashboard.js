// SegNode dashboard: refresh the parts of the page marked with data-refresh-url every data-refresh-s
// seconds by fetching the same server-rendered HTML fragment. No framework, no build step.
"use strict";

function refreshPart(element) {
  const url = element.dataset.refreshUrl;
  fetch(url, { credentials: "same-origin", headers: { "X-Requested-With": "fetch" }, cache: "no-store" })
    .then((response) => {
      if (response.status === 401) {
        window.location.assign("/login?next=" + encodeURIComponent(window.location.pathname + window.location.search));
        return null;
      }
      return response.ok ? response.text() : null;
    })
    .then((html) => {
      if (html !== null) {
        element.innerHTML = html;
        element.dataset.refreshedAt = new Date().toISOString();
        const stamp = document.getElementById("refreshed");
        if (stamp) {
          stamp.textContent = "updated " + new Date().toLocaleTimeString();
        }
      }
    })
    .catch(() => {
      const stamp = document.getElementById("refreshed");
      if (stamp) {
        stamp.textContent = "the node does not answer; retrying";
      }
    });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-refresh-url]").forEach((element) => {
    const seconds = Number(element.dataset.refreshS || "0");
    if (seconds > 0) {
      window.setInterval(() => refreshPart(element), seconds * 1000);
    }
  });
});
