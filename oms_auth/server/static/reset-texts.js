// The reset page's words, one object per language: the languages the mail ships in. reset.js
// picks the user's language, else the browser's; a key missing here falls back to English.
"use strict";

self.omsResetTexts = {
  en: {
    title: "Choose a new password",
    checking: "Checking your link\u2026",
    status: (name, when) => `This link is for the account ${name} and works until ${when}.`,
    password: "New password",
    confirm: "New password again",
    show: "Show passwords",
    rulesHeading: "Rules for your new password",
    rule: {
      length: (r) => r.max === null ? `at least ${r.min} characters`
        : r.min === null ? `at most ${r.max} characters` : `${r.min} to ${r.max} characters`,
      upper: () => "at least one uppercase letter",
      lower: () => "at least one lowercase letter",
      digit: () => "at least one number",
      any_of: () => "at least one of these characters:",
      username: () => "not the same as your username",
      common: () => "not a commonly used password",
      server: (r) => "must " + r.words,
    },
    fix: {
      length: (r) => r.max === null ? `Use at least ${r.min} characters.`
        : r.min === null ? `Use at most ${r.max} characters.`
          : `Use ${r.min} to ${r.max} characters.`,
      upper: () => "Add an uppercase letter.",
      lower: () => "Add a lowercase letter.",
      digit: () => "Add a number.",
      any_of: () => "Add one of the special characters listed below.",
      username: () => "Do not use your username as your password.",
      common: () => "This password is too common: choose one that is harder to guess.",
      server: (r) => "Your password must " + r.words + ".",
    },
    state: { ok: "(met)", bad: "(not met)", todo: "", server: "(checked when you send it)" },
    summary: (met, total) => `${met} of ${total} rules met.`,
    match: "The passwords match.",
    noMatch: "The passwords are not the same yet.",
    identityHeading: "Confirm it is you",
    identityWhy: (question, totp) => "Anyone who gets hold of this email could open the link, "
      + "so we also ask for " + (question && totp
      ? "the answer to your security question and a code from your authenticator app."
      : question ? "the answer to your security question."
        : "a code from your authenticator app."),
    totpLabel: "6-digit code from your authenticator app",
    useRecovery: "Lost your phone? Use a recovery code instead",
    useTotp: "Use a code from your authenticator app instead",
    recoveryLabel: "Recovery code: one from the list you saved, such as abcd-efgh-ijkl",
    submit: "Set new password",
    sending: "Setting your new password\u2026",
    errorPrefix: "Error: ",
    needPassword: "Enter a new password.",
    needConfirm: "Enter the new password a second time.",
    mismatch: "The two passwords are not the same. Type the new password again.",
    needAnswer: "Enter the answer to your security question.",
    needTotp: "Enter the 6-digit code your authenticator app shows now.",
    needRecovery: "Enter one of your recovery codes: 12 letters and digits, such as "
      + "abcd-efgh-ijkl.",
    wrongRecovery: "That recovery code was not accepted. Each code works once: check it, or "
      + "enter another one from your list.",
    wrongAnswer: "That answer is not right. Check the spelling and try again.",
    wrongTotp: "That code was not accepted. Codes change every 30 seconds: enter the one "
      + "your app shows now.",
    successHeading: "Your password has been changed",
    successText: "You can now log in with your new password. Every other session of your "
      + "account was logged off.",
    successClose: "You can close this page now.",
    login: "Go to login",
    deadHeading: "This link no longer works",
    deadText: "It has expired or has already been used: a reset link works once, and only "
      + "for a limited time. Ask for a new email below and use the newest link.",
    incompleteHeading: "This link is incomplete",
    incompleteText: "Part of the link is missing. Open the whole link from the email (some "
      + "mail programs break long links across lines), or ask for a new email below.",
    maybeHeading: "Your password may already have been changed",
    maybeText: "This link has been used. If you just set a new password, it is in place: "
      + "log in with it. If not, ask for a new email below.",
    laterHeading: "Please try again later",
    lockedText: "There were too many wrong attempts, so the account is locked for 30 "
      + "minutes. Your password has not been changed. After that, open this link again, or "
      + "contact support.",
    throttledText: "Too many invalid links were opened from your network. Your password has "
      + "not been changed. Please try again later.",
    lost: "No connection to the server. Your password has not been changed.",
    reconnect: "Reconnect now",
    reconnected: "Connected again.",
    notSent: "Your password has not been changed: the server cannot be reached. Check your "
      + "connection, then press \u201cSet new password\u201d again.",
    unknown: "The connection was lost before the server answered, so your password may or "
      + "may not have been changed. Press \u201cSet new password\u201d again to find out.",
    serverError: "Something went wrong on the server. Your password has not been changed. "
      + "Please try again in a few minutes.",
    resendHeading: "Get a new email",
    resendIntro: "Enter your username. If there is an account with it, we email a new link "
      + "to the account\u2019s address.",
    username: "Username",
    needUsername: "Enter your username.",
    resendSubmit: "Email me a new link",
    resendDone: "If there is an account with that username, we have sent a new link to its "
      + "email address. It can take a few minutes to arrive; use the newest email.",
    resendOff: "New links cannot be requested here. Please contact support.",
    resendFailed: "The request was not sent: the server cannot be reached. Check your "
      + "connection and try again.",
    resendError: "Something went wrong on the server. Please try again in a few minutes.",
  },
  de: {
    title: "Neues Passwort w\u00e4hlen",
    checking: "Ihr Link wird gepr\u00fcft\u2026",
    status: (name, when) => `Dieser Link gilt f\u00fcr das Konto ${name} bis zum ${when}.`,
    password: "Neues Passwort",
    confirm: "Neues Passwort wiederholen",
    show: "Passw\u00f6rter anzeigen",
    rulesHeading: "Regeln f\u00fcr Ihr neues Passwort",
    rule: {
      length: (r) => r.max === null ? `mindestens ${r.min} Zeichen`
        : r.min === null ? `h\u00f6chstens ${r.max} Zeichen` : `${r.min} bis ${r.max} Zeichen`,
      upper: () => "mindestens ein Gro\u00dfbuchstabe",
      lower: () => "mindestens ein Kleinbuchstabe",
      digit: () => "mindestens eine Ziffer",
      any_of: () => "mindestens eines dieser Zeichen:",
      username: () => "nicht gleich Ihrem Benutzernamen",
      common: () => "kein h\u00e4ufig verwendetes Passwort",
      server: (r) => "must " + r.words,
    },
    fix: {
      length: (r) => r.max === null ? `Verwenden Sie mindestens ${r.min} Zeichen.`
        : r.min === null ? `Verwenden Sie h\u00f6chstens ${r.max} Zeichen.`
          : `Verwenden Sie ${r.min} bis ${r.max} Zeichen.`,
      upper: () => "F\u00fcgen Sie einen Gro\u00dfbuchstaben hinzu.",
      lower: () => "F\u00fcgen Sie einen Kleinbuchstaben hinzu.",
      digit: () => "F\u00fcgen Sie eine Ziffer hinzu.",
      any_of: () => "F\u00fcgen Sie eines der unten genannten Sonderzeichen hinzu.",
      username: () => "Verwenden Sie nicht Ihren Benutzernamen als Passwort.",
      common: () => "Dieses Passwort ist zu verbreitet: W\u00e4hlen Sie eines, das schwerer "
        + "zu erraten ist.",
      server: (r) => "Your password must " + r.words + ".",
    },
    state: {
      ok: "(erf\u00fcllt)", bad: "(nicht erf\u00fcllt)", todo: "",
      server: "(wird beim Senden gepr\u00fcft)",
    },
    summary: (met, total) => `${met} von ${total} Regeln erf\u00fcllt.`,
    match: "Die Passw\u00f6rter stimmen \u00fcberein.",
    noMatch: "Die Passw\u00f6rter stimmen noch nicht \u00fcberein.",
    identityHeading: "Best\u00e4tigen Sie, dass Sie es sind",
    identityWhy: (question, totp) => "Wer diese E-Mail in die H\u00e4nde bekommt, k\u00f6nnte "
      + "den Link \u00f6ffnen. Deshalb fragen wir zus\u00e4tzlich nach " + (question && totp
      ? "der Antwort auf Ihre Sicherheitsfrage und einem Code aus Ihrer Authenticator-App."
      : question ? "der Antwort auf Ihre Sicherheitsfrage."
        : "einem Code aus Ihrer Authenticator-App."),
    totpLabel: "6-stelliger Code aus Ihrer Authenticator-App",
    useRecovery: "Telefon verloren? Stattdessen einen Wiederherstellungscode verwenden",
    useTotp: "Stattdessen einen Code aus Ihrer Authenticator-App verwenden",
    recoveryLabel: "Wiederherstellungscode: einer aus der gespeicherten Liste, etwa "
      + "abcd-efgh-ijkl",
    submit: "Neues Passwort speichern",
    sending: "Ihr neues Passwort wird gespeichert\u2026",
    errorPrefix: "Fehler: ",
    needPassword: "Geben Sie ein neues Passwort ein.",
    needConfirm: "Geben Sie das neue Passwort ein zweites Mal ein.",
    mismatch: "Die beiden Passw\u00f6rter sind nicht gleich. Geben Sie das neue Passwort noch "
      + "einmal ein.",
    needAnswer: "Geben Sie die Antwort auf Ihre Sicherheitsfrage ein.",
    needTotp: "Geben Sie den 6-stelligen Code ein, den Ihre Authenticator-App gerade anzeigt.",
    needRecovery: "Geben Sie einen Ihrer Wiederherstellungscodes ein: 12 Buchstaben und "
      + "Ziffern, etwa abcd-efgh-ijkl.",
    wrongRecovery: "Dieser Wiederherstellungscode wurde nicht angenommen. Jeder Code gilt nur "
      + "einmal: Pr\u00fcfen Sie ihn oder geben Sie einen anderen aus Ihrer Liste ein.",
    wrongAnswer: "Diese Antwort ist nicht richtig. Pr\u00fcfen Sie die Schreibweise und "
      + "versuchen Sie es noch einmal.",
    wrongTotp: "Dieser Code wurde nicht angenommen. Die Codes wechseln alle 30 Sekunden: "
      + "Geben Sie den ein, den Ihre App jetzt anzeigt.",
    successHeading: "Ihr Passwort wurde ge\u00e4ndert",
    successText: "Sie k\u00f6nnen sich jetzt mit Ihrem neuen Passwort anmelden. Alle anderen "
      + "Sitzungen Ihres Kontos wurden abgemeldet.",
    successClose: "Sie k\u00f6nnen diese Seite jetzt schlie\u00dfen.",
    login: "Zur Anmeldung",
    deadHeading: "Dieser Link gilt nicht mehr",
    deadText: "Er ist abgelaufen oder wurde schon benutzt: Ein Link zum Zur\u00fccksetzen "
      + "gilt nur einmal und nur f\u00fcr begrenzte Zeit. Fordern Sie unten eine neue E-Mail an "
      + "und verwenden Sie den neuesten Link.",
    incompleteHeading: "Dieser Link ist unvollst\u00e4ndig",
    incompleteText: "Ein Teil des Links fehlt. \u00d6ffnen Sie den ganzen Link aus der E-Mail "
      + "(manche E-Mail-Programme brechen lange Links um) oder fordern Sie unten eine neue "
      + "E-Mail an.",
    maybeHeading: "Ihr Passwort wurde vielleicht schon ge\u00e4ndert",
    maybeText: "Dieser Link wurde benutzt. Wenn Sie gerade ein neues Passwort gesetzt haben, "
      + "gilt es: Melden Sie sich damit an. Sonst fordern Sie unten eine neue E-Mail an.",
    laterHeading: "Bitte sp\u00e4ter noch einmal versuchen",
    lockedText: "Es gab zu viele falsche Versuche, deshalb ist das Konto f\u00fcr 30 Minuten "
      + "gesperrt. Ihr Passwort wurde nicht ge\u00e4ndert. \u00d6ffnen Sie danach diesen Link "
      + "noch einmal oder wenden Sie sich an den Support.",
    throttledText: "Von Ihrem Netzwerk aus wurden zu viele ung\u00fcltige Links ge\u00f6ffnet. "
      + "Ihr Passwort wurde nicht ge\u00e4ndert. Bitte versuchen Sie es sp\u00e4ter noch einmal.",
    lost: "Keine Verbindung zum Server. Ihr Passwort wurde nicht ge\u00e4ndert.",
    reconnect: "Jetzt neu verbinden",
    reconnected: "Wieder verbunden.",
    notSent: "Ihr Passwort wurde nicht ge\u00e4ndert: Der Server ist nicht erreichbar. "
      + "Pr\u00fcfen Sie Ihre Verbindung und dr\u00fccken Sie dann noch einmal "
      + "\u201eNeues Passwort speichern\u201c.",
    unknown: "Die Verbindung brach ab, bevor der Server antwortete. Ihr Passwort wurde "
      + "vielleicht ge\u00e4ndert, vielleicht nicht. Dr\u00fccken Sie noch einmal "
      + "\u201eNeues Passwort speichern\u201c, um es herauszufinden.",
    serverError: "Auf dem Server ist ein Fehler aufgetreten. Ihr Passwort wurde nicht "
      + "ge\u00e4ndert. Bitte versuchen Sie es in ein paar Minuten noch einmal.",
    resendHeading: "Neue E-Mail anfordern",
    resendIntro: "Geben Sie Ihren Benutzernamen ein. Gibt es dazu ein Konto, senden wir einen "
      + "neuen Link an dessen E-Mail-Adresse.",
    username: "Benutzername",
    needUsername: "Geben Sie Ihren Benutzernamen ein.",
    resendSubmit: "Neuen Link senden",
    resendDone: "Wenn es ein Konto mit diesem Benutzernamen gibt, haben wir einen neuen Link "
      + "an seine E-Mail-Adresse gesendet. Das kann ein paar Minuten dauern; verwenden Sie "
      + "die neueste E-Mail.",
    resendOff: "Neue Links k\u00f6nnen hier nicht angefordert werden. Bitte wenden Sie sich "
      + "an den Support.",
    resendFailed: "Die Anfrage wurde nicht gesendet: Der Server ist nicht erreichbar. "
      + "Pr\u00fcfen Sie Ihre Verbindung und versuchen Sie es noch einmal.",
    resendError: "Auf dem Server ist ein Fehler aufgetreten. Bitte versuchen Sie es in ein "
      + "paar Minuten noch einmal.",
  },
};
