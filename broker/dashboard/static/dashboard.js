// dvrlink dashboard: live presence over Server-Sent Events, no page reload.
// Every update is written with textContent (never as HTML), so nothing a device or a viewer
// named can become markup.
"use strict";

(function () {
  const live = document.getElementById("live");
  if (!live || typeof EventSource === "undefined") {
    return;
  }

  function say(text) {
    live.textContent = "Live updates: " + text;
  }

  function apply(update) {
    const holders = document.querySelectorAll("[data-serial]");
    holders.forEach(function (holder) {
      if (holder.dataset.serial !== update.serial) {
        return;
      }
      const state = holder.querySelector('[data-field="state"]');
      if (state && (update.state === "online" || update.state === "offline")) {
        state.textContent = update.state;
        state.classList.remove("online", "offline");
        state.classList.add(update.state);
      }
      const seen = holder.querySelector('[data-field="last_seen"]');
      if (seen && typeof update.last_seen === "string") {
        seen.textContent = update.last_seen;
      }
      const node = holder.querySelector('[data-field="node"]');
      if (node && typeof update.node === "string") {
        node.textContent = update.node || "none (offline)";
      }
    });
    if (typeof update.online_count === "number") {
      document.querySelectorAll('[data-field="online_count"]').forEach(function (node) {
        node.textContent = String(update.online_count);
      });
    }
  }

  const source = new EventSource("/dashboard/events");
  source.addEventListener("open", function () {
    say("on");
  });
  source.addEventListener("error", function () {
    say("reconnecting…");
  });
  function listen(name) {
    source.addEventListener(name, function (message) {
      try {
        apply(JSON.parse(message.data));
      } catch (err) {
        say("a malformed update was ignored");
      }
    });
  }
  listen("presence");
  listen("counters"); // the fleet's online count on a cluster (operators)
})();
