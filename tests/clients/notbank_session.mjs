// Drives the official Node.js SDK (npm `notbank`), unmodified, through a session against a
// server, over its WebSocket or its HTTP client; run by tests/test_clients_sdk.py.
// Arguments: module folder, ws|http, host:port, APIKey, APISecret, UserId, username, password,
// the username of a user sharing an account. Each step prints one JSON line:
// {"step", "value"} or {"step", "error"}. A new call is one more entry in `steps`.
import path from "node:path";
import { pathToFileURL } from "node:url";

const [moduleDir, mode, host, key, secret, userId, username, password, mate] =
  process.argv.slice(2);
const entry = path.join(moduleDir, "node_modules", "notbank", "dist", "index.js");
const { NotbankClient } = await import(pathToFileURL(entry).href);

function say(step, outcome) {
  console.log(JSON.stringify({ step, ...outcome }));
}

async function run(step, call) {
  try {
    const value = await call();
    say(step, { value: value === undefined ? null : value });
    return value;
  } catch (e) {
    say(step, { error: String(e && (e.message || e)) });
    return null;
  }
}

const client =
  mode === "ws"
    ? NotbankClient.Factory.createWebsocketClient({ domain: host })
    : NotbankClient.Factory.createRestClient(host);
await client.connect();
const uid = Number(userId);
const steps = [
  ["login", () => client.authenticateUser({ ApiPublicKey: key, ApiSecretKey: secret, UserId: userId })],
  ["userInfo", () => client.userService.getUserInfo({})],
  ["userInfoById", () => client.userService.getUserInfo({ UserId: uid })],
  ["mateInfo", () => client.userService.getUserInfo({ UserName: mate })],
  ["permissions", () => client.userService.getUserPermissions({ UserId: uid })],
  ["accounts", () => client.userService.getUserAccounts({ UserId: uid })],
  ["devices", () => client.userService.getUserDevices({ UserId: uid })],
  // Their WebAuthenticateUser, with a password (the payload APEX documents) and then the token.
  ["passwordLogin", () => client.authService.webAuthenticateUser({ UserName: username, Password: password })],
];
const results = {};
for (const [step, call] of steps) {
  results[step] = await run(step, call);
}
const token = results.passwordLogin && results.passwordLogin.SessionToken;
await run("resume", () => client.authService.webAuthenticateUser({ SessionToken: token }));
await run("logout", () => client.authService.logOut());
await run("afterLogout", () => client.userService.getUserInfo({}));
await client.close();
process.exit(0);
