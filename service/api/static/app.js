// The dashboard's only script: refresh the case list, and follow one case live (SSE).
"use strict";

function refreshCases(container) {
  const url = container.dataset.refresh;
  setInterval(async () => {
    const response = await fetch(url, { credentials: "same-origin" });
    if (response.status === 401) { window.location = "/ui/login"; return; }
    if (response.ok) { container.innerHTML = await response.text(); }
  }, 5000);
}

function addEvent(list, event) {
  const item = document.createElement("li");
  item.dataset.event = String(event.id);
  const time = document.createElement("time");
  time.textContent = new Date(event.at).toISOString().substring(11, 19);
  const type = document.createElement("code");
  type.textContent = event.type;
  const what = document.createTextNode(
    event.from_state && event.to_state ? ` ${event.from_state} → ${event.to_state} ` : (event.step ? ` ${event.step} ` : " "));
  const actor = document.createElement("span");
  actor.className = "actor";
  actor.textContent = event.actor;
  item.append(time, " ", type, what, actor);
  list.append(item);
}

function followCase(section) {
  if (section.dataset.terminal === "true") { return; }
  const list = document.getElementById("timeline");
  const state = document.getElementById("state");
  const source = new EventSource(`/ui/cases/${section.dataset.case}/stream?after=${section.dataset.lastEvent}`);
  source.onmessage = () => {};
  source.addEventListener("end", (message) => {
    const end = JSON.parse(message.data);
    source.close();
    state.textContent = end.state;
    state.className = `state state-${end.state}`;
    document.getElementById("live").textContent = "";
    setTimeout(() => window.location.reload(), 300);  // the final steps, rendered by the server
  });
  const onEvent = (message) => {
    const event = JSON.parse(message.data);
    addEvent(list, event);
    if (event.to_state) {
      state.textContent = event.to_state;
      state.className = `state state-${event.to_state}`;
    }
  };
  // The server names every timeline event type (service.domain.timeline.EventType) on the section.
  for (const type of section.dataset.eventTypes.split(" ")) {
    source.addEventListener(type, onEvent);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const cases = document.getElementById("cases");
  if (cases) { refreshCases(cases); }
  const section = document.getElementById("case");
  if (section) { followCase(section); }
});
