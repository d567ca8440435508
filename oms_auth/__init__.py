"""oms-auth: authentication and password reset for exchange OMS front-ends."""

__version__ = "0.1.0"
