//! Test identity provider for the end-to-end suite: the `oidc-provider` library served behind a Keycloak-shaped
//! realm layout, plus a Keycloak stand-in for client registration, zync's REST client protocol and key rotation.
//!
//! This is NOT Keycloak. The "Keycloak stand-in" below is our reading of Keycloak's default client registration
//! provider (`/realms/<realm>/clients-registrations/default`), enough for zync-que's Keycloak adapter; the real
//! thing is checked by pointing the suite at a Keycloak (see docs/e2e.md).
//!
//! Usage: node server.js [port]   (port 0 or unset = any free port; also IDP_PORT)
//! Environment:
//!   IDP_HOST                 interface to bind (default 127.0.0.1)
//!   IDP_PORT                 port (default 0 = any); argv[2] wins
//!   IDP_PUBLIC_URL           base URL put in the issuer (default http://<host>:<port>)
//!   IDP_REALM                realm name (default myrealm)
//!   IDP_ADMIN_CLIENT_ID      client allowed to manage clients (default zync)
//!   IDP_ADMIN_CLIENT_SECRET  its secret (default zync-secret)
//!   IDP_USERS                password-grant users, "user:password,user2:password2" (default alice:alice-password)
//!   IDP_EXTRA_CLAIM          extra claim carrying the client id besides azp (default appid; empty = none)
//!   IDP_AUDIENCE             aud of access tokens (default account, as Keycloak)
//!   IDP_TOKEN_TTL            access token lifetime in seconds (default 300)
//!   IDP_AZP                  put the client id in `azp` (default true; false = Okta-shaped tokens, where only the
//!                            extra claim carries it)
//!   IDP_STATE_FILE           file keeping the signing keys and managed clients across restarts, as Keycloak keeps
//!                            them in its database (default: none, everything is forgotten on exit)
//! When ready it prints one line: `test-idp listening on http://127.0.0.1:PORT issuer=...`.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import { promisify } from 'node:util';

import Provider, { errors } from 'oidc-provider';
import { createLocalJWKSet, jwtVerify } from 'jose';

const env = (name, fallback) => {
  const value = process.env[name];
  return value === undefined || value === '' ? fallback : value;
};

const host = env('IDP_HOST', '127.0.0.1');
const requestedPort = Number(process.argv[2] ?? env('IDP_PORT', '0'));
const realm = env('IDP_REALM', 'myrealm');
const adminClientId = env('IDP_ADMIN_CLIENT_ID', 'zync');
const adminClientSecret = env('IDP_ADMIN_CLIENT_SECRET', 'zync-secret');
const extraClaim = process.env.IDP_EXTRA_CLAIM === undefined ? 'appid' : process.env.IDP_EXTRA_CLAIM;
const audience = env('IDP_AUDIENCE', 'account');
const tokenTtl = Number(env('IDP_TOKEN_TTL', '300'));
const emitAzp = env('IDP_AZP', 'true') !== 'false';
const stateFile = env('IDP_STATE_FILE', '');
const users = new Map(
  env('IDP_USERS', 'alice:alice-password')
    .split(',')
    .map((pair) => pair.trim())
    .filter(Boolean)
    .map((pair) => {
      const i = pair.indexOf(':');
      return [pair.slice(0, i), pair.slice(i + 1)];
    }),
);
const realmPrefix = `/realms/${realm}`;
// The resource indicator every token is issued for; without a resolved resource oidc-provider issues opaque tokens.
const resourceId = 'urn:threescale-rs:test-idp:api';
const supportedGrants = ['authorization_code', 'implicit', 'client_credentials', 'password', 'refresh_token'];

// ---------------------------------------------------------------------------------------------------------------
// Storage: one unbounded store shared by every provider instance (key rotation builds a new instance), so clients
// and grants survive rotation. The library's own memory adapter is a 1000-entry LRU that evicts clients under load.

const store = new Map(); // model name -> Map(id -> { payload, expiresAt })

function modelStore(name) {
  let m = store.get(name);
  if (!m) {
    m = new Map();
    store.set(name, m);
  }
  return m;
}

class UnboundedAdapter {
  constructor(name) {
    this.name = name;
    this.items = modelStore(name);
  }

  live(id) {
    const item = this.items.get(id);
    if (!item) return undefined;
    if (item.expiresAt && item.expiresAt < Date.now()) {
      this.items.delete(id);
      return undefined;
    }
    return item.payload;
  }

  async upsert(id, payload, expiresIn) {
    this.items.set(id, { payload, expiresAt: expiresIn ? Date.now() + expiresIn * 1000 : undefined });
  }

  async find(id) {
    return this.live(id);
  }

  async findByUserCode(userCode) {
    for (const [id, item] of this.items) if (item.payload.userCode === userCode) return this.live(id);
    return undefined;
  }

  async findByUid(uid) {
    for (const [id, item] of this.items) if (item.payload.uid === uid) return this.live(id);
    return undefined;
  }

  async consume(id) {
    const payload = this.live(id);
    if (payload) payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    this.items.delete(id);
  }

  async revokeByGrantId(grantId) {
    for (const m of store.values()) {
      for (const [id, item] of m) if (item.payload.grantId === grantId) m.delete(id);
    }
  }
}

// Expired tokens would otherwise accumulate for the life of the process.
setInterval(() => {
  const now = Date.now();
  for (const m of store.values()) {
    for (const [id, item] of m) if (item.expiresAt && item.expiresAt < now) m.delete(id);
  }
}, 60_000).unref();

const clientStore = () => modelStore('Client');

// The representation each management API last wrote, returned by its GET; the provider holds derived metadata.
const representations = new Map(); // clientId -> { api: 'keycloak' | 'rest', rep }

// With IDP_STATE_FILE, signing keys and managed clients survive a restart (tokens do not: they are JWTs verified
// by key). Written synchronously after every change, through a rename so a crash never leaves half a file.
function saveState() {
  if (!stateFile) return;
  const state = {
    signingKeys,
    clients: [...clientStore().entries()].map(([id, { payload }]) => [id, payload]),
    representations: [...representations.entries()],
  };
  const tmp = `${stateFile}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(state), { mode: 0o600 });
  fs.renameSync(tmp, stateFile);
}

function loadState() {
  if (!stateFile || !fs.existsSync(stateFile)) return false;
  const state = JSON.parse(fs.readFileSync(stateFile, 'utf8'));
  signingKeys = state.signingKeys;
  for (const [id, payload] of state.clients) clientStore().set(id, { payload, expiresAt: undefined });
  for (const [id, entry] of state.representations) representations.set(id, entry);
  return true;
}

// ---------------------------------------------------------------------------------------------------------------
// Signing keys and the provider instance.

const generateKeyPair = promisify(crypto.generateKeyPair);

async function newSigningKey() {
  const { privateKey } = await generateKeyPair('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: crypto.randomUUID(), alg: 'RS256', use: 'sig' };
}

let signingKeys = []; // newest first: oidc-provider signs with the first matching key
let provider;
let providerCallback;
let issuer;

function publicJwks() {
  return {
    keys: signingKeys.map(({ kty, n, e, kid, alg, use }) => ({ kty, n, e, kid, alg, use })),
  };
}

function buildProvider() {
  const p = new Provider(issuer, {
    adapter: UnboundedAdapter,
    jwks: { keys: signingKeys },
    clients: [
      {
        client_id: adminClientId,
        client_secret: adminClientSecret,
        client_name: 'test IdP admin client (manage-clients)',
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
      },
    ],
    findAccount: async (_ctx, sub) => (users.has(sub) ? { accountId: sub, claims: async () => ({ sub }) } : undefined),
    responseTypes: ['code', 'id_token', 'code id_token', 'none'],
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => resourceId,
        useGrantedResource: async () => true,
        getResourceServerInfo: async () => resourceServerInfo(),
      },
    },
    routes: {
      authorization: '/protocol/openid-connect/auth',
      token: '/protocol/openid-connect/token',
      jwks: '/protocol/openid-connect/certs',
      userinfo: '/protocol/openid-connect/userinfo',
      introspection: '/protocol/openid-connect/token/introspect',
      revocation: '/protocol/openid-connect/revoke',
      end_session: '/protocol/openid-connect/logout',
    },
    ttl: { AccessToken: tokenTtl, ClientCredentials: tokenTtl },
    formats: { customizers: { jwt: keycloakShapedClaims } },
    // Interactive logins are out of scope for the suite; the authorization endpoint exists for discovery only.
    interactions: { url: async () => '/interaction-unsupported' },
  });
  p.registerGrantType('password', passwordGrant(p), ['username', 'password', 'scope']);
  p.on('server_error', (_ctx, err) => console.error('test-idp server_error:', err));
  return p;
}

function resourceServerInfo() {
  return {
    scope: 'openid profile email',
    audience,
    accessTokenTTL: tokenTtl,
    accessTokenFormat: 'jwt',
    jwt: { sign: { alg: 'RS256' } },
  };
}

// 3scale gateways read the client id from `azp` (or a configured claim such as `appid`); Keycloak tokens also carry
// `typ: Bearer` and, for a client allowed to manage clients, realm-management roles.
async function keycloakShapedClaims(_ctx, token, jwt) {
  const claims = jwt.payload;
  jwt.header = { typ: 'JWT' };
  if (emitAzp) claims.azp = claims.client_id;
  claims.nbf = claims.iat;
  claims.typ = 'Bearer';
  if (extraClaim) claims[extraClaim] = claims.client_id;
  if (token.accountId) claims.preferred_username = token.accountId;
  if (claims.client_id === adminClientId) {
    claims.resource_access = { 'realm-management': { roles: ['manage-clients', 'view-clients', 'create-client'] } };
  }
}

// The password grant (dropped by OAuth 2.1, so not built into oidc-provider) as Keycloak's "direct access grants".
function passwordGrant(p) {
  return async function passwordGrantHandler(ctx) {
    const { client, params } = ctx.oidc;
    const expected = users.get(params.username);
    if (
      expected === undefined
      || !params.password
      || !crypto.timingSafeEqual(
        crypto.createHash('sha256').update(expected).digest(),
        crypto.createHash('sha256').update(params.password).digest(),
      )
    ) {
      throw new errors.InvalidGrant('invalid user credentials');
    }
    const info = resourceServerInfo();
    const token = new p.AccessToken({
      accountId: params.username,
      client,
      gty: 'password',
      scope: params.scope || undefined,
    });
    token.resourceServer = new p.ResourceServer(resourceId, info);
    const value = await token.save();
    ctx.body = {
      access_token: value,
      expires_in: token.expiration,
      token_type: 'Bearer',
      ...(token.scope ? { scope: token.scope } : {}),
    };
  };
}

function installProvider() {
  provider = buildProvider();
  providerCallback = provider.callback();
}

// ---------------------------------------------------------------------------------------------------------------
// Client management shared by both management APIs: validate with the provider's own schema, then write into the
// provider's client store so the client can get tokens at once.

class ApiError extends Error {
  constructor(status, error, description) {
    super(description);
    this.status = status;
    this.body = { error, error_description: description };
  }
}

function providerMetadata({ clientId, secret, name, redirectUris, grantTypes }) {
  let grants = grantTypes.filter((g) => supportedGrants.includes(g));
  // Browser flows need a redirect URI; Keycloak accepts such clients, the library does not, and no test can use them.
  if (redirectUris.length === 0) grants = grants.filter((g) => g !== 'authorization_code' && g !== 'implicit');
  const responseTypes = [];
  if (grants.includes('authorization_code')) responseTypes.push('code');
  if (grants.includes('implicit')) responseTypes.push('id_token');
  if (grants.includes('authorization_code') && grants.includes('implicit')) responseTypes.push('code id_token');
  if (grants.length === 0) return undefined;
  return {
    client_id: clientId,
    client_secret: secret,
    ...(name ? { client_name: String(name) } : {}),
    redirect_uris: redirectUris,
    grant_types: grants,
    response_types: responseTypes,
    token_endpoint_auth_method: 'client_secret_basic',
  };
}

function storeClient(fields) {
  const metadata = providerMetadata(fields);
  if (!metadata) {
    // No usable grant: the client exists for its management API but cannot get tokens.
    clientStore().delete(fields.clientId);
    return;
  }
  let client;
  try {
    client = new provider.Client(metadata);
  } catch (err) {
    const error = err.error === 'invalid_redirect_uri' ? 'invalid_redirect_uri' : 'invalid_client_metadata';
    throw new ApiError(400, error, err.error_description || err.message);
  }
  clientStore().set(fields.clientId, { payload: client.metadata(), expiresAt: undefined });
}

function deleteClient(clientId) {
  const existed = representations.delete(clientId);
  clientStore().delete(clientId);
  saveState();
  return existed;
}

function isReservedClientId(clientId) {
  return clientId === adminClientId;
}

// ---------------------------------------------------------------------------------------------------------------
// Authentication of the management APIs: a bearer access token of this realm carrying realm-management roles (what
// zync obtains with client_credentials), or, for the REST protocol, Basic credentials of the admin client.

async function bearerRoles(req) {
  const header = req.headers.authorization || '';
  const [scheme, token] = header.split(' ');
  if (!scheme || scheme.toLowerCase() !== 'bearer' || !token) return undefined;
  try {
    const { payload } = await jwtVerify(token, createLocalJWKSet(publicJwks()), { issuer });
    if (payload.typ !== 'Bearer') return undefined;
    return new Set(payload.resource_access?.['realm-management']?.roles ?? []);
  } catch {
    return undefined;
  }
}

function basicIsAdmin(req) {
  const header = req.headers.authorization || '';
  const [scheme, value] = header.split(' ');
  if (!scheme || scheme.toLowerCase() !== 'basic' || !value) return false;
  const decoded = Buffer.from(value, 'base64').toString('utf8');
  const i = decoded.indexOf(':');
  if (i < 0) return false;
  const id = decodeURIComponent(decoded.slice(0, i));
  const secret = decodeURIComponent(decoded.slice(i + 1));
  const a = crypto.createHash('sha256').update(`${id}:${secret}`).digest();
  const b = crypto.createHash('sha256').update(`${adminClientId}:${adminClientSecret}`).digest();
  return crypto.timingSafeEqual(a, b);
}

async function requireRole(req, anyOf) {
  const roles = await bearerRoles(req);
  if (!roles) {
    throw new ApiError(401, 'invalid_token', 'Not authorized to manage clients. Maybe missing token or bad token type.');
  }
  if (!anyOf.some((r) => roles.has(r))) throw new ApiError(403, 'insufficient_scope', 'Forbidden');
}

// ---------------------------------------------------------------------------------------------------------------
// Keycloak stand-in: our reading of Keycloak's "default" client registration provider, as zync-que's Keycloak
// adapter uses it (PUT to update, POST to create after a failed PUT, DELETE). Not Keycloak.

const flagDefaults = {
  standardFlowEnabled: true,
  implicitFlowEnabled: false,
  serviceAccountsEnabled: false,
  directAccessGrantsEnabled: false,
};

function keycloakGrantTypes(rep) {
  const grants = [];
  if (rep.standardFlowEnabled) grants.push('authorization_code');
  if (rep.implicitFlowEnabled) grants.push('implicit');
  if (rep.serviceAccountsEnabled) grants.push('client_credentials');
  if (rep.directAccessGrantsEnabled) grants.push('password');
  return grants;
}

function keycloakStore(rep) {
  const fields = {
    clientId: rep.clientId,
    secret: rep.secret,
    name: rep.name,
    redirectUris: rep.redirectUris,
    grantTypes: rep.enabled === false ? [] : keycloakGrantTypes(rep),
  };
  storeClient(fields);
  representations.set(rep.clientId, { api: 'keycloak', rep });
  saveState();
}

function keycloakCreate(body) {
  if (typeof body.clientId !== 'string' || body.clientId === '') {
    throw new ApiError(400, 'invalid_client_metadata', 'clientId is required');
  }
  if (representations.has(body.clientId) || isReservedClientId(body.clientId)) {
    throw new ApiError(400, 'invalid_client_metadata', 'Client Identifier in use');
  }
  const rep = {
    id: crypto.randomUUID(),
    clientId: body.clientId,
    name: body.name ?? null,
    description: body.description ?? null,
    enabled: body.enabled ?? true,
    clientAuthenticatorType: 'client-secret',
    secret: body.secret ?? crypto.randomBytes(24).toString('base64url'),
    redirectUris: Array.isArray(body.redirectUris) ? body.redirectUris : [],
    attributes: stringAttributes(body.attributes),
    publicClient: false,
    protocol: 'openid-connect',
  };
  for (const [flag, fallback] of Object.entries(flagDefaults)) rep[flag] = body[flag] ?? fallback;
  keycloakStore(rep);
  return rep;
}

function keycloakUpdate(clientId, body) {
  const existing = representations.get(clientId);
  if (!existing || existing.api !== 'keycloak') throw new ApiError(404, 'invalid_request', 'Client not found');
  if (body.clientId !== undefined && body.clientId !== clientId) {
    throw new ApiError(400, 'invalid_client_metadata', 'Client Identifier modified');
  }
  // Keycloak skips null fields on update; an empty list still clears.
  const rep = { ...existing.rep };
  for (const key of ['name', 'description', 'enabled', 'secret', 'redirectUris', ...Object.keys(flagDefaults)]) {
    if (body[key] !== undefined && body[key] !== null) rep[key] = body[key];
  }
  if (body.attributes) rep.attributes = { ...rep.attributes, ...stringAttributes(body.attributes) };
  keycloakStore(rep);
  return rep;
}

function stringAttributes(attributes) {
  const out = {};
  for (const [k, v] of Object.entries(attributes ?? {})) out[k] = v === null ? null : String(v);
  return out;
}

async function keycloakRegistration(req, res, clientId) {
  const base = `${issuer}/clients-registrations/default`;
  if (clientId === undefined) {
    if (req.method !== 'POST') throw new ApiError(405, 'invalid_request', 'Method not allowed');
    await requireRole(req, ['manage-clients', 'create-client']);
    const rep = keycloakCreate(await readJson(req));
    log(`keycloak-stand-in: created client ${rep.clientId}`);
    return send(res, 201, rep, { Location: `${base}/${rep.clientId}` });
  }
  switch (req.method) {
    case 'GET': {
      await requireRole(req, ['manage-clients', 'view-clients']);
      const existing = representations.get(clientId);
      if (!existing || existing.api !== 'keycloak') throw new ApiError(404, 'invalid_request', 'Client not found');
      return send(res, 200, existing.rep);
    }
    case 'PUT': {
      await requireRole(req, ['manage-clients']);
      const rep = keycloakUpdate(clientId, await readJson(req));
      log(`keycloak-stand-in: updated client ${clientId}`);
      return send(res, 200, rep);
    }
    case 'DELETE': {
      await requireRole(req, ['manage-clients']);
      const existing = representations.get(clientId);
      if (!existing || existing.api !== 'keycloak') throw new ApiError(404, 'invalid_request', 'Client not found');
      deleteClient(clientId);
      log(`keycloak-stand-in: deleted client ${clientId}`);
      res.writeHead(204).end();
      return undefined;
    }
    default:
      throw new ApiError(405, 'invalid_request', 'Method not allowed');
  }
}

// ---------------------------------------------------------------------------------------------------------------
// zync's REST protocol: PUT (create or update), GET, DELETE /clients/:client_id under the issuer.

async function restClients(req, res, clientId) {
  if (!basicIsAdmin(req)) await requireRole(req, ['manage-clients']);
  switch (req.method) {
    case 'PUT': {
      const body = await readJson(req);
      if (body.client_id !== undefined && body.client_id !== clientId) {
        throw new ApiError(400, 'invalid_client_metadata', 'client_id in the body differs from the path');
      }
      if (isReservedClientId(clientId)) throw new ApiError(400, 'invalid_client_metadata', 'reserved client_id');
      const rep = {
        client_id: clientId,
        client_secret: body.client_secret ?? representations.get(clientId)?.rep.client_secret
          ?? crypto.randomBytes(24).toString('base64url'),
        client_name: body.client_name ?? null,
        redirect_uris: Array.isArray(body.redirect_uris) ? body.redirect_uris : [],
        grant_types: Array.isArray(body.grant_types) ? body.grant_types : [],
      };
      const existed = representations.has(clientId);
      storeClient({
        clientId,
        secret: rep.client_secret,
        name: rep.client_name,
        redirectUris: rep.redirect_uris,
        grantTypes: rep.grant_types,
      });
      representations.set(clientId, { api: 'rest', rep });
      saveState();
      log(`rest: ${existed ? 'updated' : 'created'} client ${clientId}`);
      return send(res, existed ? 200 : 201, rep);
    }
    case 'GET': {
      const existing = representations.get(clientId);
      if (!existing || existing.api !== 'rest') throw new ApiError(404, 'not_found', 'Client not found');
      return send(res, 200, existing.rep);
    }
    case 'DELETE': {
      const existed = deleteClient(clientId);
      log(`rest: deleted client ${clientId}`);
      // The protocol lets an already-gone client answer 204 so zync does not retry forever.
      if (existed) return send(res, 200, { client_id: clientId });
      res.writeHead(204).end();
      return undefined;
    }
    default:
      throw new ApiError(405, 'invalid_request', 'Method not allowed');
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Test controls under /test-idp/ (loopback test tool; no authentication).

async function testControls(req, res, path, url) {
  if (path === '/test-idp/health' && req.method === 'GET') {
    return send(res, 200, { status: 'ok', issuer });
  }
  if (path === '/test-idp/keys' && req.method === 'GET') {
    return send(res, 200, { signing_kid: signingKeys[0].kid, kids: signingKeys.map((k) => k.kid) });
  }
  if (path === '/test-idp/keys/rotate' && req.method === 'POST') {
    // Adds a new signing key; the old ones are retired (dropped from the JWKS) unless retire_old=false, in which
    // case they stay published for verification only.
    const retireOld = url.searchParams.get('retire_old') !== 'false';
    const key = await newSigningKey();
    const retired = retireOld ? signingKeys.map((k) => k.kid) : [];
    signingKeys = retireOld ? [key] : [key, ...signingKeys];
    installProvider();
    saveState();
    log(`keys rotated: signing kid ${key.kid}, retired ${retired.length}`);
    return send(res, 200, { signing_kid: key.kid, kids: signingKeys.map((k) => k.kid), retired });
  }
  if (path === '/test-idp/clients' && req.method === 'GET') {
    const clients = [...representations.entries()].map(([clientId, { api, rep }]) => ({
      client_id: clientId,
      api,
      can_get_tokens: clientStore().has(clientId),
      representation: rep,
    }));
    return send(res, 200, { clients });
  }
  throw new ApiError(404, 'not_found', 'unknown test-idp control');
}

// ---------------------------------------------------------------------------------------------------------------
// HTTP plumbing.

function log(message) {
  console.log(`test-idp: ${message}`);
}

function send(res, status, body, headers = {}) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

async function readJson(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 1_000_000) throw new ApiError(413, 'invalid_request', 'body too large');
    chunks.push(chunk);
  }
  if (size === 0) return {};
  try {
    const body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new Error('not an object');
    return body;
  } catch {
    throw new ApiError(400, 'invalid_request', 'body must be a JSON object');
  }
}

async function handle(req, res) {
  const url = new URL(req.url, 'http://test-idp.invalid');
  const path = url.pathname;
  if (path.startsWith('/test-idp/')) return testControls(req, res, path, url);
  if (path !== realmPrefix && !path.startsWith(`${realmPrefix}/`)) {
    throw new ApiError(404, 'not_found', `unknown realm; this test IdP serves ${realmPrefix}`);
  }
  const rest = path.slice(realmPrefix.length) || '/';
  const registration = rest.match(/^\/clients-registrations\/default(?:\/([^/]+))?\/?$/);
  if (registration) {
    const id = registration[1] === undefined ? undefined : decodeURIComponent(registration[1]);
    return keycloakRegistration(req, res, id);
  }
  const restClient = rest.match(/^\/clients\/([^/]+)$/);
  if (restClient) return restClients(req, res, decodeURIComponent(restClient[1]));
  // The provider's issuer carries the realm path; it routes on the path below it and rebuilds endpoint URLs
  // with the prefix it finds in `originalUrl` (the way Express mounts it).
  req.originalUrl = req.url;
  req.url = rest + url.search;
  return providerCallback(req, res);
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => {
    if (res.headersSent) {
      res.destroy();
      return;
    }
    if (err instanceof ApiError) {
      send(res, err.status, err.body);
    } else {
      console.error('test-idp: internal error', err);
      send(res, 500, { error: 'server_error', error_description: 'internal error' });
    }
  });
});

if (loadState()) {
  console.log(`test-idp: state loaded from ${stateFile}: ${representations.size} clients`);
} else {
  signingKeys = [await newSigningKey()];
}
saveState();
server.listen(requestedPort, host, () => {
  const { port } = server.address();
  const base = env('IDP_PUBLIC_URL', `http://${host}:${port}`).replace(/\/+$/, '');
  issuer = `${base}${realmPrefix}`;
  installProvider();
  console.log(`test-idp listening on http://${host}:${port} issuer=${issuer}`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
    setTimeout(() => process.exit(0), 1000).unref();
  });
}
