// authgate's elevation client: security keys and step-up (elevated access)
// for web apps, in one ES module without dependencies. authgate serves this
// file at /elevation/client.js; bundlers can import it from the repository
// (clients/elevation). Types: client.d.ts. Guide: docs/elevation.md.
//
// The endpoints and their JSON are authgate's ceremony endpoints
// (docs/elevation.md, "Ceremonies"); options and credentials travel in the
// WebAuthn Level 3 JSON forms (PublicKeyCredentialCreationOptionsJSON,
// RegistrationResponseJSON, ...: base64url for binary fields).

/** The header, and the cookie, that carry a grant to authgate. */
export const GRANT_NAME = 'X-Elevation-Token';

/** A grant is dropped this long before it expires, so that a request sent
 *  with it does not arrive after its end. */
const GRANT_MARGIN_MS = 5000;

/** What authgate's answers and the browser's refusals mean to a user. */
const MESSAGES = {
  cancelled:
    'The security key prompt was cancelled or timed out, or the key could not verify you (PIN or fingerprint). Try again and touch your security key.',
  not_supported:
    'This browser cannot use security keys on this page: WebAuthn needs a secure context (HTTPS, or http://localhost).',
  origin_mismatch:
    "authgate does not accept security keys from this page's origin: add it to webauthn.origins in authgate's configuration.",
  rp_id_mismatch:
    "The security key answered for another site than authgate's webauthn.rpId: serve this page from that domain (or a subdomain of it), or change webauthn.rpId.",
  credential_exists: 'This security key is already registered. Use another key.',
  no_security_key: 'No security key is registered for this account yet: add one first.',
  challenge_expired:
    'The security key request expired or was already used. Start again, and answer the prompt sooner.',
  user_not_verified:
    'The security key did not verify you (PIN or fingerprint). This key was registered with verification, so it must verify you every time.',
  user_not_present: 'The security key was not touched.',
  unknown_credential: 'This security key is not registered for this account.',
  bad_signature: "The security key's answer did not verify.",
  synced_passkey: 'This key is a synced passkey, which authgate does not accept for a step-up: use a security key.',
  elevation_required: 'This action needs a step-up with your security key.',
  grant_expired:
    'Your step-up has ended (the access token was renewed, or the step-up expired): confirm with your security key again.',
  grant_not_sent:
    "authgate still asks for a step-up right after one succeeded: the grant does not reach it. The proxy must pass the X-Elevation-Token header (or cookie) to authgate's check.",
  token_expiring: 'Your session is about to expire: sign in again, then repeat the step-up.',
  network_error: 'authgate could not be reached. Check the connection and try again.',
};

/** A failed ceremony or elevated request, with a `code` to act on. */
export class ElevationError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {{status?: number, server?: object, response?: Response, cause?: unknown}} [details]
   */
  constructor(code, message, details = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = 'ElevationError';
    this.code = code;
    this.status = details.status;
    this.server = details.server;
    this.response = details.response;
  }
}

// --- base64url and the WebAuthn JSON forms ------------------------------

/** @param {ArrayBuffer | ArrayBufferView} data */
export function toBase64url(data) {
  const bytes =
    data instanceof ArrayBuffer
      ? new Uint8Array(data)
      : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/** @param {string} text */
export function fromBase64url(text) {
  if (typeof text !== 'string' || !/^[A-Za-z0-9_-]*$/.test(text) || text.length % 4 === 1) {
    throw new ElevationError('invalid_options', 'authgate sent a malformed base64url value.');
  }
  const binary = atob(text.replace(/-/g, '+').replace(/_/g, '/') + '==='.slice((text.length + 3) % 4));
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes.buffer;
}

const withIds = (list) => (list || []).map((c) => ({ ...c, id: fromBase64url(c.id) }));

/** Options for `navigator.credentials.create` from their JSON form. */
export function creationOptionsFromJSON(json) {
  const PKC = globalThis.PublicKeyCredential;
  if (PKC && typeof PKC.parseCreationOptionsFromJSON === 'function') {
    return PKC.parseCreationOptionsFromJSON(json);
  }
  return {
    ...json,
    challenge: fromBase64url(json.challenge),
    user: { ...json.user, id: fromBase64url(json.user.id) },
    excludeCredentials: withIds(json.excludeCredentials),
  };
}

/** Options for `navigator.credentials.get` from their JSON form. */
export function requestOptionsFromJSON(json) {
  const PKC = globalThis.PublicKeyCredential;
  if (PKC && typeof PKC.parseRequestOptionsFromJSON === 'function') {
    return PKC.parseRequestOptionsFromJSON(json);
  }
  return { ...json, challenge: fromBase64url(json.challenge), allowCredentials: withIds(json.allowCredentials) };
}

/** A `PublicKeyCredential` in its JSON form (`toJSON()` where the browser has it). */
export function credentialToJSON(credential) {
  if (typeof credential.toJSON === 'function') return credential.toJSON();
  const r = credential.response;
  const response = { clientDataJSON: toBase64url(r.clientDataJSON) };
  if (r.attestationObject) {
    response.attestationObject = toBase64url(r.attestationObject);
    if (typeof r.getTransports === 'function') response.transports = r.getTransports();
  } else {
    response.authenticatorData = toBase64url(r.authenticatorData);
    response.signature = toBase64url(r.signature);
    if (r.userHandle) response.userHandle = toBase64url(r.userHandle);
  }
  const json = {
    id: credential.id,
    rawId: toBase64url(credential.rawId),
    type: credential.type,
    response,
    clientExtensionResults:
      typeof credential.getClientExtensionResults === 'function' ? credential.getClientExtensionResults() : {},
  };
  if (credential.authenticatorAttachment) json.authenticatorAttachment = credential.authenticatorAttachment;
  return json;
}

/** Whether `response` is authgate's "elevation required" denial (RFC 9470). */
export function isElevationRequired(response) {
  return (
    response.status === 401 &&
    /(^|[\s,])error="?insufficient_user_authentication(?=["\s,]|$)/.test(response.headers.get('www-authenticate') || '')
  );
}

/** The same, also for a cross-origin answer whose WWW-Authenticate the
 *  browser hides (no Access-Control-Expose-Headers): authgate's JSON body. */
async function asksForElevation(response) {
  if (response.status !== 401) return false;
  if (response.headers.has('www-authenticate')) return isElevationRequired(response);
  try {
    return (await response.clone().json()).error === 'elevation_required';
  } catch {
    return false;
  }
}

// --- the client ---------------------------------------------------------

/** The browser's refusal of a ceremony, as an ElevationError. */
function browserRefusal(e, rpId) {
  const name = e && e.name;
  if (name === 'NotAllowedError' || name === 'AbortError') {
    return new ElevationError('cancelled', MESSAGES.cancelled, { cause: e });
  }
  if (name === 'InvalidStateError') {
    return new ElevationError('credential_exists', MESSAGES.credential_exists, { cause: e });
  }
  if (name === 'SecurityError') {
    const here = globalThis.location ? globalThis.location.origin : 'this page';
    return new ElevationError(
      'rp_id_mismatch',
      `This page (${here}) cannot use security keys for "${rpId}": serve it from ${rpId} or a subdomain of it, or set webauthn.rpId in authgate's configuration to this page's domain.`,
      { cause: e },
    );
  }
  if (name === 'NotSupportedError') {
    return new ElevationError('not_supported', MESSAGES.not_supported, { cause: e });
  }
  if (e instanceof ElevationError) return e;
  return new ElevationError('ceremony_failed', `The security key ceremony failed: ${e && e.message}`, { cause: e });
}

function credentialsApi() {
  if (!globalThis.isSecureContext || !globalThis.PublicKeyCredential || !globalThis.navigator?.credentials) {
    throw new ElevationError('not_supported', MESSAGES.not_supported);
  }
  return globalThis.navigator.credentials;
}

/** Cookie path, SameSite and Secure for `grantIn: 'cookie'`. */
const COOKIE_DEFAULTS = { path: '/', sameSite: 'Strict' };

/** The origin of `url` resolved against this page, or null. */
function originOf(url) {
  try {
    return new URL(url, globalThis.location ? globalThis.location.href : undefined).origin;
  } catch {
    return null;
  }
}

export class ElevationClient {
  #base;
  #getToken;
  #grantIn;
  #cookie;
  #fetch;
  #autoElevate;
  #onElevate;
  #origins;
  #grant = null;
  #lapsed = false;
  #elevating = null;

  /** @param {import('./client.d.ts').ElevationClientOptions} [options] */
  constructor(options = {}) {
    const known = ['baseUrl', 'origins', 'getAccessToken', 'grantIn', 'cookie', 'fetch', 'autoElevate', 'onElevate'];
    for (const key of Object.keys(options)) {
      if (!known.includes(key)) throw new TypeError(`ElevationClient: unknown option "${key}"`);
    }
    if (options.grantIn !== undefined && options.grantIn !== 'header' && options.grantIn !== 'cookie') {
      throw new TypeError('ElevationClient: grantIn is "header" or "cookie"');
    }
    this.#base = (options.baseUrl || '').replace(/\/+$/, '');
    // Where the access token and the grant may go: authgate's origin and
    // the ones named; never a third party's.
    this.#origins = new Set([originOf(this.#base || '/'), ...(options.origins || []).map(originOf)]);
    this.#origins.delete(null);
    this.#getToken = options.getAccessToken || (() => null);
    this.#grantIn = options.grantIn || 'header';
    this.#cookie = { ...COOKIE_DEFAULTS, ...(options.cookie || {}) };
    if (this.#grantIn === 'cookie') {
      if (typeof document === 'undefined') throw new TypeError('ElevationClient: grantIn "cookie" needs a document');
      if (this.#cookie.sameSite === 'None') this.#cookie.secure = true;
    }
    this.#fetch = options.fetch || globalThis.fetch.bind(globalThis);
    this.#autoElevate = options.autoElevate !== false;
    this.#onElevate = options.onElevate;
  }

  /** The grant held now (for the access token it was issued with), or null. */
  get grant() {
    const g = this.#grant;
    return g && Date.now() < g.expiresAt ? { token: g.token, expiresAt: new Date(g.expiresAt) } : null;
  }

  /** Forgets the grant (and its cookie). */
  clearGrant() {
    this.#drop(false);
  }

  /** Registers the security key the user presents. The first key needs no
   *  step-up; later ones do (mode permitting), run here first when needed.
   *  @param {{nickname?: string, elevate?: boolean}} [options] */
  async addSecurityKey({ nickname, elevate } = {}) {
    // Only the first call is repeated after a step-up: once the key has
    // made a credential, starting over would make another.
    const begin = await this.#elevatedCall(elevate, () =>
      this.#call('POST', '/user/webauthn/add', nickname === undefined ? {} : { nickname }),
    );
    const options = begin.publicKey;
    let created;
    try {
      created = await credentialsApi().create({ publicKey: creationOptionsFromJSON(options) });
    } catch (e) {
      throw browserRefusal(e, options.rp && options.rp.id);
    }
    const body = { credential: credentialToJSON(created) };
    if (nickname !== undefined) body.nickname = nickname;
    return this.#call('POST', '/user/webauthn/verify', body);
  }

  /** The step-up: asks for a registered key and keeps the grant authgate
   *  issues for the current access token. Calls made while one runs share
   *  it (one prompt). */
  elevate() {
    if (!this.#elevating) {
      this.#elevating = this.#stepUp().finally(() => {
        this.#elevating = null;
      });
    }
    return this.#elevating;
  }

  async #stepUp() {
    const token = await this.#getToken();
    const begin = await this.#call('POST', '/elevate/webauthn', {}, token);
    const options = begin.publicKey;
    let asserted;
    try {
      asserted = await credentialsApi().get({ publicKey: requestOptionsFromJSON(options) });
    } catch (e) {
      throw browserRefusal(e, options.rpId);
    }
    const done = await this.#call('POST', '/elevate/webauthn/verify', { credential: credentialToJSON(asserted) }, token);
    // A grant ends with the access token: a short one keeps half its life.
    const life = done.expiresIn * 1000;
    const expiresAt = Date.now() + life - Math.min(GRANT_MARGIN_MS, life / 2);
    this.#grant = { token: done.elevationToken, expiresAt, accessToken: token };
    this.#lapsed = false;
    if (this.#grantIn === 'cookie') this.#setCookie(done.elevationToken, Math.floor((expiresAt - Date.now()) / 1000));
    if (this.#onElevate) this.#onElevate({ expiresAt: new Date(expiresAt) });
    return { expiresAt: new Date(expiresAt) };
  }

  /** The user's security keys: `[{id, nickname, createdAt}]`. */
  async listSecurityKeys() {
    return (await this.#call('GET', '/user/webauthn')).keys;
  }

  /** Deletes one of the user's keys; needs a step-up, run here first when needed.
   *  @param {string} id
   *  @param {{elevate?: boolean}} [options] */
  async deleteSecurityKey(id, { elevate } = {}) {
    await this.#elevatedCall(elevate, () => this.#call('DELETE', `/user/webauthn/${encodeURIComponent(id)}`));
  }

  /** `fetch` with the access token and the grant; on authgate's "elevation
   *  required" it runs the step-up once and sends the request again. A
   *  request to another origin than authgate's (and `origins`), or with its
   *  own Authorization header, is sent as it is.
   *  @param {RequestInfo | URL} input
   *  @param {RequestInit} [init]
   *  @param {{elevate?: boolean}} [options] */
  async fetch(input, init, { elevate } = {}) {
    const request = new Request(input, init);
    if (!this.#origins.has(originOf(request.url)) || request.headers.has('authorization')) {
      return this.#fetch(request);
    }
    const again = request.clone();
    const first = await this.#send(request);
    if (!(await asksForElevation(first))) return first;
    if (!(elevate ?? this.#autoElevate)) {
      const code = this.#lapsed ? 'grant_expired' : 'elevation_required';
      throw new ElevationError(code, MESSAGES[code], { status: 401, response: first });
    }
    if (first.body) await first.body.cancel().catch(() => {});
    await this.elevate();
    const second = await this.#send(again);
    if (await asksForElevation(second)) {
      throw new ElevationError('grant_not_sent', MESSAGES.grant_not_sent, { status: 401, response: second });
    }
    return second;
  }

  // --- internals ---

  async #elevatedCall(elevate, run) {
    try {
      return await run();
    } catch (e) {
      const retry =
        e instanceof ElevationError &&
        (e.code === 'elevation_required' || e.code === 'grant_expired') &&
        (elevate ?? this.#autoElevate);
      if (!retry) throw e;
      await this.elevate();
      return run();
    }
  }

  /** The grant for `token`, dropping one issued for another token or expired. */
  #grantFor(token) {
    const g = this.#grant;
    if (!g) return null;
    if (g.accessToken !== token || Date.now() >= g.expiresAt) {
      this.#drop(true);
      return null;
    }
    return g;
  }

  #drop(lapsed) {
    if (this.#grantIn === 'cookie') this.#setCookie('', 0);
    this.#grant = null;
    this.#lapsed = lapsed;
  }

  #setCookie(value, maxAge) {
    const c = this.#cookie;
    const secure = c.secure ?? globalThis.location?.protocol === 'https:';
    document.cookie =
      `${GRANT_NAME}=${value}; Path=${c.path}; Max-Age=${maxAge}; SameSite=${c.sameSite}` + (secure ? '; Secure' : '');
  }

  #headers(token, base) {
    const headers = new Headers(base);
    if (token && !headers.has('authorization')) headers.set('authorization', `Bearer ${token}`);
    const grant = this.#grantFor(token);
    if (grant && this.#grantIn === 'header') headers.set(GRANT_NAME, grant.token);
    return headers;
  }

  async #send(request) {
    const headers = this.#headers(await this.#getToken(), request.headers);
    return this.#fetch(new Request(request, { headers }));
  }

  /** One ceremony endpoint call: its JSON answer, or the ElevationError it means. */
  async #call(method, path, body, token) {
    const t = token === undefined ? await this.#getToken() : token;
    const headers = this.#headers(t);
    const init = { method, headers };
    if (body !== undefined) {
      headers.set('content-type', 'application/json');
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await this.#fetch(this.#base + path, init);
    } catch (e) {
      throw new ElevationError('network_error', MESSAGES.network_error, { cause: e });
    }
    if (response.status === 204) return null;
    const text = await response.text();
    let json = null;
    try {
      json = JSON.parse(text);
    } catch {
      // Not JSON: a proxy's page, described below.
    }
    if (response.ok && json) return json;
    throw this.#refusal(response, json, text);
  }

  #refusal(response, json, text) {
    const status = response.status;
    if (!json || typeof json.error !== 'string') {
      return new ElevationError('unexpected_response', `${status} from ${response.url}: ${text.slice(0, 200)}`, {
        status,
        response,
      });
    }
    let code = json.cause || json.error;
    if (code === 'invalid_challenge') code = 'challenge_expired';
    if (code === 'elevation_required' && this.#lapsed) code = 'grant_expired';
    let message = MESSAGES[code] || json.message || code;
    if (code === 'origin_mismatch' && globalThis.location) {
      message = `authgate does not accept security keys from this page's origin (${globalThis.location.origin}): add it to webauthn.origins in authgate's configuration.`;
    }
    return new ElevationError(code, message, { status, server: json, response });
  }
}

/** An ElevationClient (see ElevationClient's options). */
export function createElevationClient(options) {
  return new ElevationClient(options);
}
