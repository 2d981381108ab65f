// Verifies JWTs against a JWKS URL with jose (panva/jose), a library
// authgate does not use, and prints one JSON line per token:
// {"ok":true,"kid":..,"alg":..,"payload":{..}} or {"ok":false,"error":..}.
// Usage: node verify-jwt.mjs JWKS_URL ISSUER AUDIENCE TOKEN...
import { createRemoteJWKSet, jwtVerify } from 'jose';

const [jwksUrl, issuer, audience, ...tokens] = process.argv.slice(2);
const jwks = createRemoteJWKSet(new URL(jwksUrl), { cooldownDuration: 0 });
for (const token of tokens) {
  try {
    const { payload, protectedHeader } = await jwtVerify(token, jwks, {
      issuer,
      audience,
      algorithms: ['ES256', 'ES384', 'EdDSA', 'RS256'],
    });
    console.log(JSON.stringify({ ok: true, kid: protectedHeader.kid, alg: protectedHeader.alg, payload }));
  } catch (e) {
    console.log(JSON.stringify({ ok: false, error: e.code || String(e) }));
  }
}
