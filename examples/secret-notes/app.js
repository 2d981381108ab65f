// Secret Notes' page: authgate's browser client (served by authgate through
// Envoy at /elevation/client.js) does the security-key ceremonies, and its
// fetch steps up by itself when the notes API answers that elevation is
// missing. `window.secretNotes` is what the buttons call (and the tests).
import { createElevationClient } from '/elevation/client.js';

let accessToken = null;
let user = null;
let elevations = 0;

const client = createElevationClient({
  getAccessToken: () => accessToken,
  onElevate: () => {
    elevations += 1;
  },
});

/** A notes API call through the client: its JSON, or an Error with the status. */
async function api(method, path, body, options) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await client.fetch(path, init, options);
  if (response.status === 204) return null;
  const json = await response.json().catch(() => null);
  if (!response.ok) {
    const e = new Error(`${method} ${path}: ${response.status} ${(json && json.error) || response.statusText}`);
    e.status = response.status;
    throw e;
  }
  return json;
}

async function signIn(name) {
  const response = await fetch('/demo/sign-in', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ user: name }),
  });
  if (!response.ok) throw new Error(`sign-in: ${response.status}`);
  accessToken = (await response.json()).accessToken;
  user = name;
}

export const secretNotes = {
  get user() {
    return user;
  },
  get accessToken() {
    return accessToken;
  },
  /** Step-ups run so far. */
  get elevations() {
    return elevations;
  },
  client,
  async signIn(name) {
    client.clearGrant();
    await signIn(name);
  },
  /** A new access token for the same user, as a session refresh gives:
   *  the grant held is bound to the old one and stops working. */
  renew: () => signIn(user),
  signOut() {
    accessToken = null;
    user = null;
    client.clearGrant();
  },
  readNotes: async () => (await api('GET', '/api/notes')).notes,
  addNote: (text, options) => api('POST', '/api/notes', { text }, options),
  deleteNote: (id, options) => api('DELETE', `/api/notes/${encodeURIComponent(id)}`, undefined, options),
  addKey: (nickname, options) => client.addSecurityKey({ nickname, ...options }),
  listKeys: () => client.listSecurityKeys(),
  deleteKey: (id, options) => client.deleteSecurityKey(id, options),
  stepUp: () => client.elevate(),
};
window.secretNotes = secretNotes;

// --- the page ---

const $ = (id) => document.getElementById(id);

function say(text, ok) {
  $('message').textContent = text;
  $('message').className = ok ? 'ok' : 'error';
}

/** Runs a button's action, then shows its outcome (an ElevationError's message says what to do). */
async function act(action, done) {
  try {
    await action();
    if (done) say(done, true);
  } catch (e) {
    say(e.code ? `${e.message} (${e.code})` : e.message, false);
  }
  await render();
}

function item(text, label, onClick) {
  const li = document.createElement('li');
  li.append(text + ' ');
  const b = document.createElement('button');
  b.type = 'button';
  b.textContent = label;
  b.addEventListener('click', onClick);
  li.append(b);
  return li;
}

async function render() {
  $('signed-out').hidden = !!user;
  $('signed-in').hidden = !user;
  if (!user) return;
  $('who').textContent = user;
  const grant = client.grant;
  $('elevated').textContent = grant ? `Stepped up until ${grant.expiresAt.toLocaleTimeString()}.` : '';
  try {
    const notes = await secretNotes.readNotes();
    $('notes').replaceChildren(
      ...notes.map((n) => item(n.text, 'Delete', () => act(() => secretNotes.deleteNote(n.id), 'Note deleted.'))),
    );
    const keys = await secretNotes.listKeys();
    $('keys').replaceChildren(
      ...keys.map((k) =>
        item(`${k.nickname || 'security key'} (added ${new Date(k.createdAt).toLocaleDateString()})`, 'Remove', () =>
          act(() => secretNotes.deleteKey(k.id), 'Security key removed.'),
        ),
      ),
    );
  } catch (e) {
    say(e.message, false);
  }
}

$('sign-in').addEventListener('submit', (ev) => {
  ev.preventDefault();
  act(() => secretNotes.signIn($('user').value), 'Signed in.');
});
$('renew').addEventListener('click', () =>
  act(() => secretNotes.renew(), 'New access token: the next write asks for the key again.'),
);
$('sign-out').addEventListener('click', () => act(async () => secretNotes.signOut()));
$('add-note').addEventListener('submit', (ev) => {
  ev.preventDefault();
  act(async () => {
    await secretNotes.addNote($('note').value);
    $('note').value = '';
  }, 'Note added.');
});
$('add-key').addEventListener('submit', (ev) => {
  ev.preventDefault();
  act(async () => {
    await secretNotes.addKey($('nickname').value || undefined);
    $('nickname').value = '';
  }, 'Security key added.');
});
render();
