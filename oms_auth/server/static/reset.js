// The reset page: reads UserId and PendingCode from its URL, asks the server what is needed,
// checks the password rules as the user types (the rules come from the server, embedded in the
// page), and sends ResetPassword2 over the WebSocket. No external assets, no storage.
//
// Where things are shown, and why:
// - a final outcome (changed, link no longer works, locked) replaces the form: the heading
//   says it, the box under it holds the details and the next step, and it takes the focus;
// - anything the user can fix sits right above the field it concerns; the field takes the
//   focus and is scrolled into view with its label, and the message is its description;
// - a lost connection is a banner that stays in view, with a retry; it never takes the focus
//   from someone typing.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const config = JSON.parse($("config").textContent);
  const params = new URLSearchParams(location.search);
  const userId = params.get("UserId") || "";
  const code = params.get("PendingCode") || "";
  const wsUrl = document.querySelector("main").dataset.ws;

  // -- words ----------------------------------------------------------------------------------
  // The page speaks the user's language (the one its mail is in), else the browser's.
  const TEXTS = self.omsResetTexts;

  function baseLanguage(tag) {
    return String(tag || "").toLowerCase().split(/[-_]/)[0];
  }

  function pickLanguage(userLocale) {
    const wanted = [userLocale, ...(navigator.languages || []), navigator.language];
    return wanted.map(baseLanguage).find((l) => TEXTS[l]) || "en";
  }

  let lang = "en";
  let t = TEXTS.en;

  // English fills in whatever a translation lacks.
  function texts(language) {
    const out = Object.assign({}, TEXTS.en, TEXTS[language]);
    for (const part of ["rule", "fix", "state"]) {
      out[part] = Object.assign({}, TEXTS.en[part], TEXTS[language][part]);
    }
    return out;
  }

  function setLanguage(userLocale) {
    lang = pickLanguage(userLocale);
    t = texts(lang);
    document.documentElement.lang = lang;
    for (const el of document.querySelectorAll("[data-t]")) el.textContent = t[el.dataset.t];
  }

  // Dates in the page's language, in the browser's own regional form where it has one (de-AT
  // for a German page in Austria), always with the time zone.
  function formatTime(ms) {
    const regional = (navigator.languages || []).find((l) => baseLanguage(l) === lang);
    return new Intl.DateTimeFormat(regional || lang, {
      year: "numeric", month: "long", day: "numeric", hour: "numeric", minute: "2-digit",
      timeZoneName: "short",
    }).format(new Date(ms));
  }

  // -- the OMS frame protocol over one WebSocket ----------------------------------------------
  const ANSWER_TIMEOUT_MS = 30000;
  // A socket closed after this long open was probably only idle: reconnect once, quietly. One
  // closed sooner says the server is in trouble (and a quiet retry could loop).
  const QUIET_AFTER_MS = 5000;
  const net = { ready: null, socket: null, nextI: 0, pending: new Map(), openedAt: 0 };
  // Whether the page needs the server right now (a form is showing): only then is a lost
  // connection news, and only then is it retried.
  let watching = false;
  let lostShown = false;
  let retryDelay = 2000;
  let retryTimer = null;

  class Lost extends Error {
    // sent: the request left the page, so the server may have acted on it.
    constructor(sent) { super("connection lost"); this.sent = sent; }
  }

  function connect() {
    if (net.ready) return net.ready;
    net.ready = new Promise((resolve, reject) => {
      const ws = new WebSocket(wsUrl);
      let opened = false;
      ws.addEventListener("open", () => {
        opened = true;
        net.openedAt = Date.now();
        net.socket = ws;
        resolve(ws);
        connectionBack();
      });
      ws.addEventListener("message", onFrame);
      ws.addEventListener("close", () => {
        net.ready = null;
        net.socket = null;
        for (const waiter of net.pending.values()) waiter.reject(new Lost(true));
        net.pending.clear();
        if (!opened) reject(new Lost(false));
        connectionGone(opened && Date.now() - net.openedAt > QUIET_AFTER_MS);
      });
    });
    return net.ready;
  }

  function onFrame(event) {
    let frame;
    try { frame = JSON.parse(event.data); } catch (e) { return; }
    const waiter = net.pending.get(frame.i);
    if (!waiter) return;
    net.pending.delete(frame.i);
    let o = frame.o;
    try { o = typeof o === "string" ? JSON.parse(o) : o; } catch (e) { o = null; }
    waiter.resolve({ m: frame.m, o: o });
  }

  async function call(name, payload) {
    let ws;
    try { ws = await connect(); } catch (e) { throw new Lost(false); }
    const i = net.nextI;
    net.nextI += 2;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        net.pending.delete(i);
        reject(new Lost(true));
      }, ANSWER_TIMEOUT_MS);
      const settle = (fn) => (value) => { clearTimeout(timer); fn(value); };
      net.pending.set(i, { resolve: settle(resolve), reject: settle(reject) });
      try {
        ws.send(JSON.stringify({ m: 0, i: i, n: name, o: JSON.stringify(payload) }));
      } catch (e) {
        net.pending.delete(i);
        settle(reject)(new Lost(false));
      }
    });
  }

  // -- a lost connection ---------------------------------------------------------------------
  function connectionGone(idle) {
    if (!watching) return;
    if (idle && !lostShown) {
      connect().catch(() => {});
      return;
    }
    showLost();
    clearTimeout(retryTimer);
    retryTimer = setTimeout(() => connect().catch(() => {}), retryDelay);
    retryDelay = Math.min(retryDelay * 2, 30000);
  }

  function showLost() {
    if (lostShown) return;
    lostShown = true;
    $("connection").hidden = false;
    $("connection-text").textContent = t.lost; // set once visible, so it is announced
  }

  function connectionBack() {
    clearTimeout(retryTimer);
    retryDelay = 2000;
    if (!lostShown) return;
    lostShown = false;
    $("connection").hidden = true;
    announce(t.reconnected);
    if (!requirements && watching) start();
  }

  function reconnectNow() {
    clearTimeout(retryTimer);
    connect().catch(() => {});
  }

  function stopWatching() {
    watching = false;
    clearTimeout(retryTimer);
    lostShown = false;
    $("connection").hidden = true;
  }

  // -- rules, checked as the user types -------------------------------------------------------
  // min and max become one rule ("9 to 19 characters"): two rules about one count read as a
  // riddle. Each shown rule remembers which of the server's rules it stands for, so a refusal
  // naming a server rule marks the right line.
  function shownRules(rules) {
    const out = [];
    let length = null;
    rules.forEach((rule, index) => {
      if (rule.kind === "min" || rule.kind === "max") {
        if (!length) {
          length = { kind: "length", min: null, max: null, sources: [] };
          out.push(length);
        }
        length[rule.kind] = rule.arg;
        length.sources.push(index);
        return;
      }
      const known = Object.prototype.hasOwnProperty.call(checks, rule.kind);
      out.push({ kind: known ? rule.kind : "server", arg: rule.arg, words: rule.words,
        sources: [index] });
    });
    return out;
  }

  let username = null; // told by the server: the link's holder is the user
  let common = null; // the blocklist, once loaded
  let refused = { password: null, rules: new Set() }; // what the server last refused

  // Mirrors passwords._disguises on the server (tests hold the two against each other).
  const LEET = { 0: "o", 1: "l", 3: "e", 4: "a", 5: "s", 7: "t", "@": "a", $: "s", "!": "i" };
  const TRAILING = "0123456789" + config.specials;

  // Near enough Python's casefold: the round trip turns "\u00df" and "\u1e9e" into "ss".
  const fold = (s) => s.toLowerCase().toUpperCase().toLowerCase();

  function disguises(password) {
    const folded = fold(password);
    let end = folded.length;
    while (end > 0 && TRAILING.includes(folded[end - 1])) end -= 1;
    const bare = folded.slice(0, end);
    const undo = (s) => [...s].map((c) => LEET[c] || c).join("");
    return [folded, bare, undo(folded), undo(bare)];
  }

  // null: the page cannot tell (the server will).
  const checks = {
    length: (p, r) => {
      const n = [...p].length;
      return (r.min === null || n >= r.min) && (r.max === null || n <= r.max);
    },
    upper: (p) => /\p{Lu}/u.test(p),
    lower: (p) => /\p{Ll}/u.test(p),
    digit: (p) => /\p{Nd}/u.test(p),
    any_of: (p, r) => [...p].some((c) => r.arg.includes(c)),
    username: (p) => username === null ? null
      : fold(p) !== fold(username.trim()),
    common: (p) => common === null ? null
      : !disguises(p).some((w) => w.length >= 4 && common.has(w)),
    server: () => null,
  };

  const rules = shownRules(config.rules);

  function ruleState(rule, password) {
    if (password === "") return "todo";
    if (password === refused.password && rule.sources.some((s) => refused.rules.has(s))) {
      return "bad";
    }
    const ok = checks[rule.kind](password, rule);
    return ok === null ? "server" : ok ? "ok" : "bad";
  }

  function renderRules() {
    const list = $("rules");
    list.textContent = "";
    for (const rule of rules) {
      const li = document.createElement("li");
      const mark = document.createElement("span");
      mark.className = "mark";
      mark.setAttribute("aria-hidden", "true");
      const words = document.createElement("span");
      words.textContent = t.rule[rule.kind](rule);
      if (rule.kind === "any_of") words.append(" ", characters(rule.arg));
      const state = document.createElement("span");
      state.className = "visually-hidden";
      li.dataset.kind = rule.kind;
      li.append(mark, words, state);
      list.appendChild(li);
    }
    updateRules();
  }

  // In a typeface where "|" and "l", "," and "." look apart.
  function characters(chars) {
    const code = document.createElement("code");
    code.textContent = [...chars].join(" ");
    return code;
  }

  const MARKS = { ok: "\u2713", bad: "\u2717", todo: "\u2022", server: "\u2022" };

  // Returns the rules the password breaks, as far as the page can tell.
  function updateRules() {
    const password = $("password").value;
    const broken = [];
    let met = 0;
    rules.forEach((rule, index) => {
      const state = ruleState(rule, password);
      const li = $("rules").children[index];
      li.dataset.state = state;
      li.children[0].textContent = MARKS[state];
      li.children[2].textContent = t.state[state] ? " " + t.state[state] : "";
      if (state === "bad") broken.push(rule);
      if (state === "ok") met += 1;
    });
    updateMatch();
    summarizeLater(met);
    return broken;
  }

  function updateMatch() {
    const password = $("password").value;
    const confirm = $("confirm").value;
    const match = $("match");
    // Silence while the second copy is still a beginning of the first: not yet is not wrong.
    const same = confirm !== "" && confirm === password;
    // While the message above the field says so, the hint would only repeat it.
    const off = confirm !== "" && !password.startsWith(confirm) && $("confirm-error").hidden;
    match.dataset.state = same ? "ok" : off ? "bad" : "";
    match.textContent = same ? "\u2713 " + t.match : off ? t.noMatch : "";
  }

  // A screen reader hears how far the password is once the typing pauses, not per key.
  let summaryTimer = null;
  let lastSummary = "";
  function summarizeLater(met) {
    clearTimeout(summaryTimer);
    summaryTimer = setTimeout(() => {
      const text = $("password").value === "" ? "" : t.summary(met, rules.length);
      if (text !== lastSummary) $("rules-summary").textContent = lastSummary = text;
    }, 900);
  }

  function loadBlocklist() {
    const script = document.createElement("script");
    script.src = "reset-common.js";
    script.addEventListener("load", () => {
      if (typeof self.omsCommonPasswords !== "string") return;
      common = new Set(self.omsCommonPasswords.split("\n"));
      delete self.omsCommonPasswords;
      updateRules();
    });
    document.head.appendChild(script);
  }

  // -- messages next to fields ---------------------------------------------------------------
  function announce(text) {
    // Emptied first, so the same words twice are announced twice.
    $("announce").textContent = "";
    setTimeout(() => { $("announce").textContent = text; }, 50);
  }

  function showError(name, text) {
    const box = $(name + "-error");
    const prefix = document.createElement("span");
    prefix.className = "visually-hidden";
    prefix.textContent = t.errorPrefix;
    box.replaceChildren(prefix, text);
    box.hidden = false;
    box.dataset.outcome = "error";
    const control = $(name);
    if (control.tagName === "INPUT") control.setAttribute("aria-invalid", "true");
  }

  function clearError(name) {
    const box = $(name + "-error");
    if (box.hidden) return;
    box.hidden = true;
    box.textContent = "";
    delete box.dataset.outcome;
    $(name).removeAttribute("aria-invalid");
  }

  function clearErrors(form) {
    for (const box of $(form).querySelectorAll(".error")) clearError(box.id.replace(/-error$/, ""));
  }

  // Scrolls so the field's label, its message and the control are all in view (under the
  // banner), then focuses the control. When it already has the focus, moving focus would say
  // nothing, so the message is announced instead.
  function focusProblem(name) {
    const control = $(name);
    const box = $(name + "-error");
    reveal((control.labels && control.labels[0]) || box, control);
    if (document.activeElement === control) announce(box.textContent);
    control.focus({ preventScroll: true });
  }

  function reveal(first, last) {
    const banner = $("connection").hidden ? 0 : $("connection").getBoundingClientRect().bottom;
    const top = first.getBoundingClientRect().top;
    const bottom = last.getBoundingClientRect().bottom;
    if (top >= banner && bottom <= window.innerHeight) return;
    window.scrollBy(0, top - banner - 12);
  }

  // -- final outcomes -------------------------------------------------------------------------
  function finish(kind, heading, paragraphs, next) {
    stopWatching();
    $("form").hidden = true;
    $("heading").textContent = heading;
    document.title = heading;
    $("status").textContent = "";
    const box = $("outcome");
    box.replaceChildren(...paragraphs.map((text) => {
      const p = document.createElement("p");
      p.textContent = text;
      return p;
    }));
    if (next) box.appendChild(next);
    box.dataset.outcome = kind;
    box.hidden = false;
    window.scrollTo(0, 0);
    box.focus({ preventScroll: true });
  }

  function succeeded() {
    let next = null;
    if (config.loginUrl) {
      next = document.createElement("a");
      next.className = "button";
      next.href = config.loginUrl;
      next.textContent = t.login;
    }
    finish("success", t.successHeading, [t.successText].concat(next ? [] : [t.successClose]),
      next);
    if (net.socket) net.socket.close();
  }

  // The link cannot be used (expired, used, broken): offer to send a new one.
  function deadEnd(heading, text) {
    finish("error", heading, [text]);
    $("resend").hidden = false;
    if (username) $("username").value = username;
  }

  function refusedForGood(reply) {
    const detail = (reply && reply.detail) || "";
    if (detail === config.refusals.locked) {
      finish("error", t.laterHeading, [t.lockedText]);
    } else if (detail === config.refusals.tooManyKeys) {
      finish("error", t.laterHeading, [t.throttledText]);
    } else if (detail === config.refusals.badUserId) {
      deadEnd(t.incompleteHeading, t.incompleteText);
    } else if (reply && reply.errorcode === 104) {
      deadEnd(t.deadHeading, t.deadText);
    } else {
      return false;
    }
    return true;
  }

  // -- the form -------------------------------------------------------------------------------
  let requirements = null;
  let sending = false;
  let uncertain = false; // a send was lost after it left: the password may have been changed

  function problems() {
    const out = [];
    const password = $("password").value;
    const broken = updateRules();
    if (password === "") out.push(["password", t.needPassword]);
    else if (broken.length) out.push(["password", broken.map((r) => t.fix[r.kind](r)).join(" ")]);
    else if ($("confirm").value === "") out.push(["confirm", t.needConfirm]);
    else if ($("confirm").value !== password) out.push(["confirm", t.mismatch]);
    if (requirements.SecurityQuestion && $("answer").value.trim() === "") {
      out.push(["answer", t.needAnswer]);
    }
    if (requirements.Requires2FA && !secondFactorShaped()) {
      out.push(["totp", recovery ? t.needRecovery : t.needTotp]);
    }
    return out;
  }

  // A user without the phone gives one of its recovery codes in the same field instead
  // (12 letters and digits, dashes and spaces ignored); the server takes either as Code.
  let recovery = false;

  function secondFactorShaped() {
    const value = $("totp").value;
    if (recovery) return /^[a-z2-7]{12}$/i.test(value.replace(/[\s-]/g, ""));
    return /^[0-9]{6}$/.test(value.trim());
  }

  function useRecovery(on) {
    recovery = on;
    const input = $("totp");
    $("totp-label").dataset.t = on ? "recoveryLabel" : "totpLabel";
    $("use-recovery").dataset.t = on ? "useTotp" : "useRecovery";
    for (const id of ["totp-label", "use-recovery"]) $(id).textContent = t[$(id).dataset.t];
    input.value = "";
    input.inputMode = on ? "text" : "numeric";
    input.autocomplete = on ? "off" : "one-time-code";
    input.maxLength = on ? 20 : 6;
    if (on) input.removeAttribute("pattern");
    else input.pattern = "[0-9]{6}";
    input.autocapitalize = "none";
    input.spellcheck = false;
    clearError("totp");
    input.focus();
  }

  function showProblems(list) {
    for (const [name, text] of list) showError(name, text);
    updateMatch();
    focusProblem(list[0][0]);
  }

  // A refusal of the password names the server's rules in its words: mark those lines and say
  // how to fix each in the page's words.
  function passwordRefusal(detail) {
    const prefix = config.refusals.rules;
    if (!detail.startsWith(prefix)) return null;
    const named = detail.slice(prefix.length).split("; ");
    refused = { password: $("password").value, rules: new Set() };
    const fixes = [];
    for (const words of named) {
      const index = config.rules.findIndex((rule) => rule.words === words);
      const rule = rules.find((r) => r.sources.includes(index));
      if (index >= 0) refused.rules.add(index);
      const fix = rule ? t.fix[rule.kind](rule) : t.fix.server({ words: words });
      if (!fixes.includes(fix)) fixes.push(fix);
    }
    updateRules();
    return fixes.join(" ");
  }

  function fixable(reply) {
    const detail = (reply && reply.detail) || "";
    const r = config.refusals;
    if (detail === r.wrongAnswer) return [["answer", t.wrongAnswer]];
    if (detail === r.totpRequired) return [["totp", recovery ? t.needRecovery : t.needTotp]];
    if (detail === r.wrongTotp) return [["totp", recovery ? t.wrongRecovery : t.wrongTotp]];
    const fixes = reply && reply.errorcode === 100 ? passwordRefusal(detail) : null;
    if (fixes) return [["password", fixes]];
    return [["submit", t.serverError]];
  }

  function setSending(on) {
    sending = on;
    const button = $("submit");
    // aria-disabled, not disabled: a disabled button drops the focus to the page body.
    if (on) button.setAttribute("aria-disabled", "true");
    else button.removeAttribute("aria-disabled");
    $("progress").textContent = on ? t.sending : "";
  }

  async function submit(event) {
    event.preventDefault();
    if (sending) return;
    clearErrors("form");
    const found = problems();
    if (found.length) {
      showProblems(found);
      return;
    }
    const payload = { UserId: userId, Password: $("password").value, PendingCode: code };
    if (requirements.SecurityQuestion) payload.SecurityQuestionAnswer = $("answer").value;
    if (requirements.Requires2FA) payload.Code = $("totp").value.trim();
    setSending(true);
    let reply;
    try {
      reply = (await call("ResetPassword2", payload)).o;
    } catch (e) {
      setSending(false);
      if (e.sent) uncertain = true;
      showProblems([["submit", e.sent ? t.unknown : t.notSent]]);
      return;
    }
    setSending(false);
    // Any answer but "no such code" shows the lost attempt changed nothing.
    const maybeChanged = uncertain && reply && reply.errorcode === 104;
    uncertain = false;
    if (maybeChanged) {
      deadEnd(t.maybeHeading, t.maybeText);
      return;
    }
    if (reply && reply.result === true) {
      $("password").value = "";
      $("confirm").value = "";
      succeeded();
      return;
    }
    if (refusedForGood(reply)) return;
    showProblems(fixable(reply));
  }

  function onPasswordInput() {
    clearError("password");
    clearError("confirm");
    updateRules();
  }

  // -- a new email ----------------------------------------------------------------------------
  async function resend(event) {
    event.preventDefault();
    if (sending) return;
    clearErrors("resend");
    const name = $("username").value.trim();
    if (name === "") {
      showProblems([["username", t.needUsername]]);
      return;
    }
    sending = true;
    $("resend-submit").setAttribute("aria-disabled", "true");
    let reply;
    let lost = false;
    try {
      reply = (await call("ResetPassword", { UserName: name })).o;
    } catch (e) {
      lost = true;
    }
    sending = false;
    $("resend-submit").removeAttribute("aria-disabled");
    if (lost) {
      showProblems([["resend-submit", t.resendFailed]]);
      return;
    }
    // Whatever the server says about the name (it says the same for every name), the page
    // says one thing too: whether an account exists is nobody's business here.
    const off = Boolean(reply) && reply.detail === config.refusals.selfServiceOff;
    if (!off && (!reply || reply.result !== true)) {
      showProblems([["resend-submit", t.resendError]]);
      return;
    }
    $("resend").hidden = true;
    const done = $("resend-done");
    done.textContent = off ? t.resendOff : t.resendDone;
    done.hidden = false;
    reveal(done, done);
    done.focus({ preventScroll: true });
  }

  // -- start ----------------------------------------------------------------------------------
  function showForm(reply) {
    requirements = reply;
    username = reply.UserName || null;
    $("account-name").value = username || "";
    setLanguage(reply.Locale);
    $("heading").textContent = t.title;
    document.title = t.title;
    renderRules();
    const question = Boolean(reply.SecurityQuestion);
    const totp = Boolean(reply.Requires2FA);
    if (question) {
      $("question-label").textContent = reply.SecurityQuestion;
      $("answer-field").hidden = false;
    }
    $("totp-field").hidden = !totp;
    $("identity").hidden = !(question || totp);
    $("identity-why").textContent = t.identityWhy(question, totp);
    $("status").textContent = t.status(username || "", formatTime(reply.ExpiresAt));
    $("form").hidden = false;
    $("password").focus();
    if (rules.some((r) => r.kind === "common")) loadBlocklist();
  }

  async function start() {
    if (!/^[0-9]+$/.test(userId) || !code) {
      deadEnd(t.incompleteHeading, t.incompleteText);
      return;
    }
    watching = true;
    let reply;
    try {
      reply = (await call("GetRequirementsForPasswordSet", { PendingCode: code })).o;
    } catch (e) {
      showLost(); // connectionBack() starts again
      return;
    }
    if (reply && reply.UserId !== undefined) {
      showForm(reply);
    } else if (!refusedForGood(reply)) {
      finish("error", t.laterHeading, [t.serverError]);
    }
  }

  setLanguage(null);
  $("heading").textContent = t.title;
  document.title = t.title;
  $("status").textContent = t.checking;
  $("password").addEventListener("input", onPasswordInput);
  $("confirm").addEventListener("input", onPasswordInput);
  $("answer").addEventListener("input", () => clearError("answer"));
  $("totp").addEventListener("input", () => clearError("totp"));
  $("use-recovery").addEventListener("click", () => useRecovery(!recovery));
  $("username").addEventListener("input", () => clearError("username"));
  $("show").addEventListener("change", (e) => {
    const type = e.target.checked ? "text" : "password";
    $("password").type = type;
    $("confirm").type = type;
  });
  $("reconnect").addEventListener("click", reconnectNow);
  $("form").addEventListener("submit", submit);
  $("resend").addEventListener("submit", resend);
  start();
})();
