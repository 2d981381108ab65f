// Types for client.js, authgate's elevation client (docs/elevation.md).

/** The header, and the cookie, that carry a grant to authgate. */
export declare const GRANT_NAME: 'X-Elevation-Token';

/**
 * What went wrong, to act on:
 * - `cancelled`: the user dismissed the prompt, it timed out, or the key was not accepted;
 * - `not_supported`: no WebAuthn here (not a secure context, or an old browser);
 * - `rp_id_mismatch`: the page's domain is not `webauthn.rpId` or a subdomain of it;
 * - `origin_mismatch`: authgate does not list the page's origin in `webauthn.origins`;
 * - `credential_exists`: this key is already registered;
 * - `no_security_key`: the user has no key to step up with;
 * - `challenge_expired`: the ceremony took longer than `elevation.challengeTtl`, or was replayed;
 * - `user_not_verified`, `user_not_present`, `unknown_credential`, `bad_signature`, `synced_passkey`: the key's
 *   answer was refused;
 * - `elevation_required`: the request needs a step-up (and `elevate: false` was asked);
 * - `grant_expired`: the grant held ended, because the access token was renewed or it expired;
 * - `grant_not_sent`: a step-up succeeded but authgate still asks for one (the proxy drops the grant);
 * - `token_expiring`: the access token expires too soon to step up with;
 * - `network_error`: authgate could not be reached;
 * - `ceremony_failed`, `invalid_options`: the browser or authgate failed otherwise;
 * - any other `error` or `cause` authgate answers (docs/elevation.md: `malformed_credential`,
 *   `unsupported_key`, `wrong_ceremony`, `challenge_mismatch`, `user_required`, `token_required`,
 *   `invalid_token`, `token_expired`, `internal_error`, ...), or `unexpected_response`.
 */
export type ElevationErrorCode =
  | 'cancelled'
  | 'not_supported'
  | 'rp_id_mismatch'
  | 'origin_mismatch'
  | 'credential_exists'
  | 'no_security_key'
  | 'challenge_expired'
  | 'user_not_verified'
  | 'user_not_present'
  | 'unknown_credential'
  | 'bad_signature'
  | 'synced_passkey'
  | 'elevation_required'
  | 'grant_expired'
  | 'grant_not_sent'
  | 'token_expiring'
  | 'network_error'
  | 'ceremony_failed'
  | 'invalid_options'
  | 'unexpected_response'
  | (string & {});

export declare class ElevationError extends Error {
  constructor(
    code: string,
    message: string,
    details?: { status?: number; server?: object; response?: Response; cause?: unknown },
  );
  readonly name: 'ElevationError';
  readonly code: ElevationErrorCode;
  /** The HTTP status of authgate's refusal, when it refused. */
  readonly status?: number;
  /** authgate's JSON body (`{error, message, cause?}`), when it sent one. */
  readonly server?: { error: string; message: string; cause?: string };
  readonly response?: Response;
}

export interface ElevationClientOptions {
  /** Where authgate's endpoints are reached (through the proxy); default: this origin. */
  baseUrl?: string;
  /** Other origins whose requests through `fetch` get the access token and the grant
   *  (authgate's own always do); requests to any other origin are sent untouched. */
  origins?: string[];
  /** The current access token (sent as `Authorization: Bearer`); null when the proxy gets it another way. */
  getAccessToken?: () => string | null | undefined | Promise<string | null | undefined>;
  /** Where the grant goes: the `X-Elevation-Token` header on this client's requests (default),
   *  or a host-only cookie of that name, which the browser sends with requests to this page's
   *  host (so authgate must be reached on that host). */
  grantIn?: 'header' | 'cookie';
  /** Cookie attributes for `grantIn: 'cookie'`: path `/`, SameSite `Strict`, Secure on https pages
   *  (always with SameSite `None`) by default. */
  cookie?: { path?: string; sameSite?: 'Strict' | 'Lax' | 'None'; secure?: boolean };
  /** The fetch to use (default: the browser's). */
  fetch?: typeof fetch;
  /** Step up by itself when authgate asks for it (default true). */
  autoElevate?: boolean;
  /** Called after each successful step-up. */
  onElevate?: (grant: { expiresAt: Date }) => void;
}

export interface SecurityKey {
  id: string;
  nickname: string | null;
  /** RFC 3339. */
  createdAt: string;
}

export declare class ElevationClient {
  constructor(options?: ElevationClientOptions);
  /** The grant held now, or null. */
  readonly grant: { token: string; expiresAt: Date } | null;
  clearGrant(): void;
  addSecurityKey(options?: { nickname?: string; elevate?: boolean }): Promise<{ id: string; nickname: string | null }>;
  /** One step-up at a time: calls made while one runs share it. */
  elevate(): Promise<{ expiresAt: Date }>;
  listSecurityKeys(): Promise<SecurityKey[]>;
  deleteSecurityKey(id: string, options?: { elevate?: boolean }): Promise<void>;
  /** Like `fetch`; steps up once and resends when authgate answers 401 with
   *  `WWW-Authenticate: Bearer error="insufficient_user_authentication"` (throws an
   *  ElevationError instead with `{elevate: false}`, or `autoElevate: false`). Requests to
   *  other origins, or with their own Authorization header, are sent untouched. */
  fetch(input: RequestInfo | URL, init?: RequestInit, options?: { elevate?: boolean }): Promise<Response>;
}

export declare function createElevationClient(options?: ElevationClientOptions): ElevationClient;

export declare function isElevationRequired(response: Response): boolean;
export declare function toBase64url(data: ArrayBuffer | ArrayBufferView): string;
export declare function fromBase64url(text: string): ArrayBuffer;
export declare function creationOptionsFromJSON(json: any): PublicKeyCredentialCreationOptions;
export declare function requestOptionsFromJSON(json: any): PublicKeyCredentialRequestOptions;
export declare function credentialToJSON(credential: PublicKeyCredential): any;
