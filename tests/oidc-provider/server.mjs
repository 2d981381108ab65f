// A real OpenID provider (panva's certified oidc-provider) for authgate's
// integration tests: client-credentials tokens (JWT with a resource, opaque
// without), introspection, revocation, a JWKS that can be rotated.
//
// Usage: node server.mjs CONFIG.json
//   CONFIG: {"keys": [kid, ...], "tls"?: {"cert", "key"},
//            "requiredHeader"?: [name, value]}
// Each kid names an RSA key generated on first use. Prints "READY <port>"
// once listening. Each stdin line "KEYS <json array of kids>" replaces the
// published keys (the first one signs) and prints "KEYS OK".
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import readline from 'node:readline';

import Provider, { errors } from 'oidc-provider';

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const server = cfg.tls
  ? https.createServer({ cert: cfg.tls.cert, key: cfg.tls.key })
  : http.createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const port = server.address().port;
const issuer = cfg.tls ? `https://localhost:${port}` : `http://127.0.0.1:${port}`;

// The clients the tests use: an application that gets tokens, and authgate
// introspecting with each client authentication method.
const client = (id, secret, method) => ({
  client_id: id,
  client_secret: secret,
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  token_endpoint_auth_method: method,
  scope: 'read',
});
const clients = [
  client('hasura-app', 'app-secret', 'client_secret_basic'),
  client('authgate', 'introspect-secret', 'client_secret_basic'),
  client('authgate-post', 'introspect-post-secret', 'client_secret_post'),
];

const generated = new Map();
const jwks = (kids) => ({
  keys: kids.map((kid) => {
    if (!generated.has(kid)) {
      const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
      generated.set(kid, privateKey.export({ format: 'jwk' }));
    }
    return { ...generated.get(kid), kid, alg: 'RS256', use: 'sig' };
  }),
});

const provider = (keys) => {
  const p = new Provider(issuer, {
    clients,
    jwks: jwks(keys),
    scopes: ['read'],
    ttl: { ClientCredentials: 600 },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => undefined,
        useGrantedResource: () => false,
        getResourceServerInfo: (ctx, resource) => {
          if (resource === 'urn:authgate:hasura') {
            return {
              scope: 'read',
              audience: 'hasura',
              accessTokenTTL: 600,
              accessTokenFormat: 'jwt',
              jwt: { sign: { alg: 'RS256' } },
            };
          }
          throw new errors.InvalidTarget();
        },
      },
    },
    // Hasura's claims, in JWT access tokens and in introspection answers.
    extraTokenClaims: (ctx, token) =>
      token.kind === 'ClientCredentials'
        ? {
            'https://hasura.io/jwt/claims': {
              'x-hasura-default-role': 'service',
              'x-hasura-allowed-roles': ['service'],
              'x-hasura-user-id': token.clientId,
            },
          }
        : undefined,
  });
  return p.callback();
};

let handler = provider(cfg.keys);
server.on('request', (req, res) => {
  const required = cfg.requiredHeader;
  if (required && req.headers[required[0].toLowerCase()] !== required[1]) {
    res.writeHead(401, { 'content-type': 'text/plain' });
    res.end('credentials required');
    return;
  }
  handler(req, res);
});

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  if (line.startsWith('KEYS ')) {
    handler = provider(JSON.parse(line.slice(5)));
    console.log('KEYS OK');
  }
});
// The test's end closes stdin: exit with it.
process.stdin.on('end', () => process.exit(0));
console.log(`READY ${port}`);
