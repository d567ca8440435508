// Drives the published npm client alphapoint-apex-api, unmodified, through one session against
// the server named on the command line; prints one JSON line per step for the Python test.
// usage: node apex_session.js MODULE_DIR WS_URL USERNAME PASSWORD
const [moduleDir, url, username, password] = process.argv.slice(2);
const { APEX } = require(moduleDir + '/node_modules/alphapoint-apex-api');

const within = (promise, ms = 5000) =>
  Promise.race([promise, new Promise((resolve) => setTimeout(() => resolve('TIMEOUT'), ms))]);
const withCallback = (apex, method, ...args) =>
  new Promise((resolve) => apex[method](...args, resolve));
const connect = () =>
  new Promise((resolve) => {
    const apex = new APEX(url, { onopen: () => resolve(apex), onclose: () => {} });
    apex.ws.subscribe((frame) => {
      if (frame.m === 3) console.log(JSON.stringify({ step: 'event', frame }));
    });
  });
const say = (step, value) => console.log(JSON.stringify({ step, value }));

(async () => {
  const a = await connect();
  say('ping', await within(a.Ping()));
  const login = await within(withCallback(a, 'authenticateUser', username, password));
  say('login', { reply: login, isAuthenticated: a.isAuthenticated, accountId: a.accountId });
  say('userInfo', await within(withCallback(a, 'getUserInfo', undefined).then((f) => f.o)));
  say('permissions', await within(withCallback(a, 'getUserPermissions', login.UserId).then((f) => f.o)));
  say('accounts', await within(withCallback(a, 'getUserAccounts', 1).then((f) => f.o)));
  const b = await connect();
  const web = await within(
    withCallback(b, 'webAuthenticateUser', { username, password }).then((f) => f.o)
  );
  say('webLogin', web);
  const c = await connect();
  say('resume', await within(
    withCallback(c, 'webAuthenticateUser', { SessionToken: login.SessionToken }).then((f) => f.o)
  ));
  say('logout', await within(c.RPCPromise('LogOut', {}).then((f) => f.o)));
  await new Promise((resolve) => setTimeout(resolve, 500)); // a gets its LogoutEvent meanwhile
  process.exit(0);
})();
