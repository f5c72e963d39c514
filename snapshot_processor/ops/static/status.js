'use strict';
// The status page's script: it refreshes the parts of the page the server renders
// (each with an id), follows a snapshot asked for from a camera's button and sends a
// person's verdict on an event (person / not a person) for the labelled set.
const REFRESH = Number(document.querySelector('main').dataset.refresh) * 1000;
const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
let turn = 0; // the latest click: an older one stops following its snapshot
const judged = new Map(); // event id -> the verdict kept, shown again after each refresh

function showJudged() {
  for (const button of document.querySelectorAll('button[data-verdict]')) {
    const kept = judged.get(button.dataset.event);
    if (kept) button.setAttribute('aria-pressed', String(kept === button.dataset.verdict));
  }
}

async function refresh() {
  const query = new URLSearchParams(location.search); // the gallery's filters stay
  query.set('part', 'main');
  try {
    const answer = await fetch('/?' + query, {credentials: 'same-origin'});
    if (answer.status === 401) { location.reload(); return; }
    if (!answer.ok) return;
    const parts = document.createElement('template');
    parts.innerHTML = await answer.text();
    const open = new Set(Array.from(document.querySelectorAll('details[open][data-id]'),
                                    (details) => details.dataset.id));
    for (const part of Array.from(parts.content.children)) {
      const old = document.getElementById(part.id);
      if (old) old.replaceWith(part);
    }
    for (const details of document.querySelectorAll('details[data-id]')) {
      if (open.has(details.dataset.id)) details.open = true;
    }
    showJudged();
  } catch (e) { /* the daemon may be restarting: try again at the next turn */ }
}

async function read(url) {
  try {
    const answer = await fetch(url, {credentials: 'same-origin'});
    return answer.ok ? await answer.json() : null;
  } catch (e) { return null; }
}

async function healthOf(key) {
  const found = await read('/api/cameras');
  const camera = found && found.cameras.find((c) => c.key === key);
  return camera ? camera.health : null;
}

function say(mine, text, outcome, link) {
  if (mine !== turn) return; // a newer click owns the note
  const note = document.getElementById('note');
  note.textContent = text;
  note.dataset.outcome = outcome;
  if (link) {
    const anchor = document.createElement('a');
    anchor.href = link;
    anchor.textContent = 'see the image';
    note.append(' ', anchor);
  }
}

async function snapshot(button) {
  const mine = ++turn;
  const key = button.dataset.snap, label = button.dataset.label;
  const note = document.getElementById('note');
  delete note.dataset.event;
  say(mine, 'Asking ' + label + ' for a snapshot…', 'asking');
  button.disabled = true;
  let before, reply;
  try {
    before = await healthOf(key);
    const answer = await fetch('/api/cameras/' + encodeURIComponent(key) + '/snapshot',
                               {method: 'POST', credentials: 'same-origin'});
    if (!answer.ok) {
      const why = (await answer.text()).trim();
      say(mine, 'Snapshot of ' + label + ' refused (HTTP ' + answer.status + '): ' + why, 'refused');
      return;
    }
    reply = await answer.json();
  } catch (e) {
    say(mine, 'Snapshot of ' + label + ': the daemon did not answer', 'refused');
    return;
  } finally { button.disabled = false; }
  if (mine !== turn) return;
  note.dataset.event = reply.event_id;
  say(mine, 'Snapshot of ' + label + ' asked for (event ' + reply.event_id + '); waiting for the camera…',
      'waiting');
  const started = Date.now(), within = reply.answer_within * 1000;
  while (mine === turn) {
    await sleep(1000);
    if (mine !== turn) return;
    const events = await read('/api/events?limit=20&camera=' + encodeURIComponent(key));
    if (events && events.events.some((e) => e.event_id === reply.event_id)) {
      say(mine, 'Snapshot taken: ' + label + ', event ' + reply.event_id + '.', 'taken',
          '/api/events/' + reply.event_id + '/image?annotated=1');
      refresh();
      return;
    }
    const now = await healthOf(key), late = Date.now() - started > within;
    // Down since the click (or still down once its attempts are over): the camera's answer.
    const turned = now && now.up === false && (late || !before || before.up !== false ||
      before.since !== now.since || before.last_error !== now.last_error ||
      before.last_failure !== now.last_failure);
    if (turned) {
      say(mine, 'Snapshot of ' + label + ' failed: ' + now.last_error, 'failed');
      refresh();
      return;
    }
    if (late && Date.now() - started > within + 15000) {
      say(mine, 'No snapshot from ' + label + ' after ' + Math.round((Date.now() - started) / 1000) +
          ' s; its event may still come below.', 'none');
      return;
    }
  }
}

async function judge(button) {
  const mine = ++turn;
  const id = button.dataset.event, verdict = button.dataset.verdict;
  const note = document.getElementById('note');
  delete note.dataset.event;
  button.disabled = true;
  try {
    const answer = await fetch('/api/events/' + encodeURIComponent(id) + '/feedback', {
      method: 'POST', credentials: 'same-origin',
      headers: {'Content-Type': 'application/json'}, body: JSON.stringify({verdict}),
    });
    if (!answer.ok) {
      const why = (await answer.text()).trim();
      say(mine, 'Verdict on event ' + id + ' refused (HTTP ' + answer.status + '): ' + why, 'refused');
      return;
    }
    const reply = await answer.json();
    judged.set(id, verdict);
    showJudged();
    say(mine, 'Verdict ' + reply.note + '.', 'labelled');
  } catch (e) {
    say(mine, 'Verdict on event ' + id + ': the daemon did not answer', 'refused');
  } finally { button.disabled = false; }
}

document.addEventListener('click', (event) => {
  const button = event.target.closest('button[data-snap]');
  if (button) snapshot(button);
  const verdict = event.target.closest('button[data-verdict]');
  if (verdict) judge(verdict);
});
setInterval(refresh, REFRESH);
