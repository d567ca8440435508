// The reset page: reads UserId and PendingCode from its URL, asks the server what is needed,
// checks the password rules as the user types (the rules come from the server, embedded in the
// page), and sends ResetPassword2 over the WebSocket. No external assets, no storage.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const userId = params.get("UserId") || "";
  const code = params.get("PendingCode") || "";
  const policy = JSON.parse($("policy").textContent);
  const wsUrl = document.querySelector("main").dataset.ws;
  let requirements = null;

  // -- the OMS frame protocol over one WebSocket --------------------------------------------
  let socket = null;
  let nextI = 0;
  const pending = new Map();

  let ready = null;

  function connect() {
    // One socket, opened on first use and again after it closes.
    if (ready) return ready;
    ready = new Promise((resolve, reject) => {
      socket = new WebSocket(wsUrl);
      socket.addEventListener("open", () => resolve(socket), { once: true });
      socket.addEventListener("error", () => reject(new Error("connection failed")),
                              { once: true });
      socket.addEventListener("message", (event) => {
        let frame;
        try { frame = JSON.parse(event.data); } catch (e) { return; }
        const waiter = pending.get(frame.i);
        if (!waiter) return;
        pending.delete(frame.i);
        let o = frame.o;
        try { o = typeof o === "string" ? JSON.parse(o) : o; } catch (e) { o = null; }
        waiter.resolve({ m: frame.m, o: o });
      });
      socket.addEventListener("close", () => {
        ready = null;
        for (const waiter of pending.values()) waiter.reject(new Error("connection closed"));
        pending.clear();
      });
    });
    return ready;
  }

  async function call(name, payload) {
    const ws = await connect();
    const i = nextI;
    nextI += 2;
    return new Promise((resolve, reject) => {
      pending.set(i, { resolve, reject });
      ws.send(JSON.stringify({ m: 0, i: i, n: name, o: JSON.stringify(payload) }));
    });
  }

  // -- rules, checked as the user types ---------------------------------------------------
  const checks = {
    min: (p, n) => [...p].length >= n,
    max: (p, n) => [...p].length <= n,
    upper: (p) => /\p{Lu}/u.test(p),
    lower: (p) => /\p{Ll}/u.test(p),
    digit: (p) => /\p{Nd}/u.test(p),
    any_of: (p, chars) => [...p].some((c) => chars.includes(c)),
  };

  function renderRules() {
    const list = $("rules");
    list.textContent = "";
    for (const rule of policy) {
      const li = document.createElement("li");
      li.textContent = rule.words + (rule.kind === "server" ? " (checked when you submit)" : "");
      li.dataset.kind = rule.kind;
      li.dataset.state = rule.kind === "server" ? "server" : "todo";
      list.appendChild(li);
    }
  }

  function updateRules() {
    const value = $("password").value;
    const items = $("rules").children;
    let allOk = true;
    policy.forEach((rule, index) => {
      const check = checks[rule.kind];
      if (!check) return;
      const ok = check(value, rule.arg);
      allOk = allOk && ok;
      items[index].dataset.state = value === "" ? "todo" : ok ? "ok" : "bad";
    });
    const confirm = $("confirm").value;
    const match = $("match");
    if (confirm === "") match.textContent = "";
    else if (confirm === value) match.textContent = "The passwords match.";
    else match.textContent = "The passwords do not match yet.";
    return allOk && value === confirm && value !== "";
  }

  // -- outcomes -------------------------------------------------------------------------------
  function status(text) {
    $("status").textContent = text;
  }

  function outcome(kind, text, keepForm) {
    const box = $("outcome");
    box.hidden = false;
    box.dataset.outcome = kind;
    box.textContent = text;
    $("form").hidden = !keepForm;
    $("submit").disabled = false;
    status("");
  }

  function explain(reply) {
    const detail = (reply && reply.detail) || "";
    switch (reply && reply.errorcode) {
      case 104:
        return ["This link has expired or has already been used. Reset links work once, for "
          + "24 hours. Ask for a new password reset email and use the newest link.", false];
      case 101:
        if (/locked/i.test(detail)) {
          return ["Too many wrong attempts: the account is locked for 30 minutes. Try again "
            + "later with the same link, or contact support.", false];
        }
        return [detail || "The password could not be changed. Please contact support.", false];
      case 20:
        if (/security question/i.test(detail)) {
          return ["The answer to the security question is not right. Check it and try again.",
                  true];
        }
        if (/required/i.test(detail)) {
          return ["Enter the six-digit code from your authenticator app.", true];
        }
        return ["The code from your authenticator app was not accepted. Wait for a new code "
          + "and try again.", true];
      case 100:
        return [detail || "Something in the form is not right.", true];
      default:
        return ["The password could not be changed (" + (detail || "server error")
          + "). Please try again later.", true];
    }
  }

  async function submit(event) {
    event.preventDefault();
    if (!updateRules()) {
      outcome("error", $("password").value !== $("confirm").value
        ? "The two passwords are not the same."
        : "The new password does not meet every rule above yet.", true);
      $("password").focus();
      return;
    }
    const payload = { UserId: userId, Password: $("password").value, PendingCode: code };
    if (requirements.SecurityQuestion) payload.SecurityQuestionAnswer = $("answer").value;
    if (requirements.Requires2FA) payload.Code = $("totp").value.trim();
    $("submit").disabled = true;
    $("outcome").hidden = true;
    delete $("outcome").dataset.outcome;
    status("Sending\u2026");
    let reply;
    try {
      reply = (await call("ResetPassword2", payload)).o;
    } catch (e) {
      outcome("error", "The connection to the server was lost. Please try again.", true);
      return;
    }
    if (reply && reply.result === true) {
      $("password").value = "";
      $("confirm").value = "";
      outcome("success", "Your password has been changed. You can now log in with it; "
        + "every other session was logged off.", false);
      return;
    }
    const [text, keep] = explain(reply);
    outcome("error", text, keep);
  }

  async function start() {
    renderRules();
    if (!userId || !code) {
      outcome("error", "This link is incomplete. Open the whole link from the email, or ask "
        + "for a new password reset email.", false);
      return;
    }
    let reply;
    try {
      reply = (await call("GetRequirementsForPasswordSet", { PendingCode: code })).o;
    } catch (e) {
      outcome("error", "The server cannot be reached. Please try again later.", false);
      return;
    }
    if (!reply || reply.UserId === undefined) {
      const [text] = explain(reply);
      outcome("error", text, false);
      return;
    }
    requirements = reply;
    if (reply.SecurityQuestion) {
      $("question-label").textContent = reply.SecurityQuestion;
      $("question-field").hidden = false;
      $("answer").required = true;
    }
    if (reply.Requires2FA) {
      $("totp-field").hidden = false;
      $("totp").required = true;
    }
    const expires = new Date(reply.ExpiresAt);
    status("Choose a new password. This link works until " + expires.toLocaleString() + ".");
    $("form").hidden = false;
    $("password").focus();
  }

  $("password").addEventListener("input", updateRules);
  $("confirm").addEventListener("input", updateRules);
  $("show").addEventListener("change", (e) => {
    const type = e.target.checked ? "text" : "password";
    $("password").type = type;
    $("confirm").type = type;
  });
  $("form").addEventListener("submit", submit);
  start();
})();
