"""The exact texts the clients see, in the source documents' words where they give them."""

from __future__ import annotations

__all__ = [
    "INVALID_LOGIN",
    "TOO_MANY_LOGINS",
    "LOGINS_IN_PROGRESS",
    "ACCOUNT_LOCKED",
    "CONTACT_SUPPORT",
    "INVALID_2FA_CODE",
    "TOTP_REQUIRED",
    "NO_PENDING_2FA",
    "INVALID_SESSION",
    "INVALID_USERNAME",
    "INVALID_USER_ID",
    "INVALID_EMAIL",
    "NOT_LOGGED_IN",
    "ONLY_OPERATORS_UNLOCK",
    "ONLY_OWN_USER",
    "ONLY_RELATED_USERS",
    "AMBIGUOUS_EMAIL",
    "BASIC_REQUIRED",
    "INVALID_PASSWORD",
    "INVALID_RECOVERY_KEY",
    "INVALID_ANSWER",
    "USERNAME_NOT_FOUND",
    "USER_NOT_FOUND",
    "TOO_MANY_INVALID_KEYS",
    "NO_PERMISSION_FOR_USER",
    "NEEDS_SECURITY_QUESTIONS",
    "TOO_MANY_RESETS",
    "SELF_SERVICE_OFF",
    "PASSWORD_RULES_PREFIX",
    "INVALID_API_KEY_LOGIN",
    "API_KEY_SESSION",
    "ONLY_OWN_API_KEYS",
    "API_KEY_NOT_FOUND",
    "TOO_MANY_API_KEYS",
    "INVALID_PERMISSIONS",
    "ONLY_OPERATORS",
    "ONLY_OWN_SECURITY",
    "TOTP_ALREADY_ON",
    "TOTP_NOT_ON",
    "TURN_ON_2FA_FIRST",
    "INVALID_QUESTIONS",
    "WRONG_PASSWORD",
    "USERNAME_NOT_AVAILABLE",
    "MUST_SET_QUESTIONS",
    "ENROLMENT_NEEDS_CONNECTION",
    "CONFIRM_PASSWORD",
    "AUTHORITY_GONE",
    "QUESTION_WITHOUT_ANSWER",
    "INVALID_TOTP_SECRET",
    "federated_refusal",
]

INVALID_LOGIN = "Invalid username or password"
TOO_MANY_LOGINS = "Too many failed login attempts; try again later"
# Every slot of a login limit stayed held by attempts in flight for login_wait_seconds.
LOGINS_IN_PROGRESS = "Too many login attempts in progress; try again in a moment"
ACCOUNT_LOCKED = "Account has been locked for 30 minutes"
CONTACT_SUPPORT = "Your request cannot be processed. Please contact support"
INVALID_2FA_CODE = "Invalid two-factor code"
TOTP_REQUIRED = "Time-based One Time Password authentication is required to log in with this user"
NO_PENDING_2FA = "No two-factor authentication is pending on this connection"
INVALID_SESSION = "Invalid or expired session token"
INVALID_USERNAME = "Invalid value provided for Username"
INVALID_PASSWORD = "Invalid value provided for Password"
INVALID_USER_ID = "Invalid value provided for UserId"
INVALID_EMAIL = "Invalid value provided for Email"
NOT_LOGGED_IN = "Not logged in"
ONLY_OPERATORS_UNLOCK = "Only an Operator may unlock users"
ONLY_OWN_USER = "Only an Operator may see users other than itself"
ONLY_RELATED_USERS = (
    "Only an Operator, or a Trading user sharing one of its accounts, may see another user"
)
AMBIGUOUS_EMAIL = "Several users have this Email; name the user by UserId or UserName"
BASIC_REQUIRED = "HTTP Basic credentials (UserName:Password) are required"
INVALID_RECOVERY_KEY = "Invalid password recovery key"
INVALID_ANSWER = "Invalid answer provided for security question"
USERNAME_NOT_FOUND = "Username does not exist"
USER_NOT_FOUND = "User does not exist"
TOO_MANY_INVALID_KEYS = "Too many invalid password recovery keys from this address; try again later"
NO_PERMISSION_FOR_USER = "You do not have permission to request password reset for this user"
NEEDS_SECURITY_QUESTIONS = (
    "You must have security questions set on your account before changing your password"
)
TOO_MANY_RESETS = "Too many password reset requests for this user; try again later"
SELF_SERVICE_OFF = "Self-service password reset is turned off; ask an operator"
PASSWORD_RULES_PREFIX = "Your portal password must "
# API keys (docs/rules.md, "API keys"). One text for every way an API-key login fails.
INVALID_API_KEY_LOGIN = "Invalid API key login"
API_KEY_SESSION = (
    "A session opened with an API key cannot change account security; log in with the password"
)
ONLY_OWN_API_KEYS = "Only an Operator may manage the API keys of other users"
API_KEY_NOT_FOUND = "API key does not exist"
TOO_MANY_API_KEYS = "This user has as many API keys as it may hold; remove one first"
INVALID_PERMISSIONS = "Invalid value provided for Permissions"
# The account functions (docs/protocol.md, "Functions").
ONLY_OPERATORS = "Only an Operator may do this"
ONLY_OWN_SECURITY = "Only the user itself may change or see its account security"
TOTP_ALREADY_ON = "Two-factor authentication is already enabled; disable it first"
TOTP_NOT_ON = "Two-factor authentication is not enabled for this user"
# Recovery codes belong to users with TOTP on (docs/rules.md, "Recovery codes").
TURN_ON_2FA_FIRST = "Turn on two-factor authentication first"
INVALID_QUESTIONS = "Invalid value provided for Questions"
WRONG_PASSWORD = "The password given is not the current password"
# A taken username and a look-alike of one, whatever OMS holds it (docs/rules.md, "Usernames"): one
# text, so an Operator learns nothing of what another OMS holds, nor which of the two it was.
USERNAME_NOT_AVAILABLE = "That username is not available"
MUST_SET_QUESTIONS = (
    "Set your security questions before you log out: a master user answers one to reset"
    " its password"
)
ENROLMENT_NEEDS_CONNECTION = (
    "EnableGoogle2FA needs a WebSocket connection: the code that proves it follows on the same"
    " connection"
)
# Who may do what (docs/rules.md, "Fresh proof for account-security changes").
CONFIRM_PASSWORD = "Confirm your password first: log in again on this connection"
AUTHORITY_GONE = (
    "Your session ended or lost the permission this needs meanwhile; nothing was changed"
)
# Creating a user with its secrets given (the command line, the demo): the values, not the
# flags that carry them, so the texts read right for every caller (the CLI names its flags).
QUESTION_WITHOUT_ANSWER = "A security question and its answer go together"
INVALID_TOTP_SECRET = "A TOTP secret must be base32 of at least 80 bits"

_FEDERATED = {
    "openidconnect": (
        "This user is authenticated by OpenIdConnect and must use the OpenIdConnect provider"
        " to change their password"
    ),
    "saml": (
        "This user is authenticated by SAML Federation and must use the SAML Federation"
        " provider to change their password"
    ),
}


def federated_refusal(auth_source: str) -> str | None:
    """The refusal for a user whose password lives with a federation provider, else None."""
    return _FEDERATED.get(auth_source)
