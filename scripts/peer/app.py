"""The peer: FastAPI + fastapi-users on SQLite (SQLAlchemy, aiosqlite), laid out as the
fastapi-users SQLAlchemy example, with every default a team would ship. Forgot-password writes
the mail to an ``outbox`` table and commits before fastapi-users answers 202.

Runs under the peer's venv, not the project's: ``PEER_DB=/path/db.sqlite3 uvicorn app:app``.
``python app.py seed N [FORMAT]`` creates users with emails FORMAT.format(k=k) for k < N
(t{k}@bench.example by default: pydantic's EmailStr, which the route takes, refuses the
special-use .test domain with a 422).
"""

import asyncio
import logging
import os
import sys
import uuid
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi_users import BaseUserManager, FastAPIUsers, UUIDIDMixin, schemas
from fastapi_users.authentication import AuthenticationBackend, BearerTransport, JWTStrategy
from fastapi_users.password import PasswordHelper
from fastapi_users_db_sqlalchemy import SQLAlchemyBaseUserTableUUID, SQLAlchemyUserDatabase
from sqlalchemy import DateTime, Integer, String, insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

DATABASE_URL = "sqlite+aiosqlite:///" + os.environ.get("PEER_DB", "peer.sqlite3")
SECRET = os.environ.get("PEER_SECRET", "bench-peer-secret-not-for-production")
RESET_URL = "http://127.0.0.1/reset-password?token="


class Base(DeclarativeBase):
    pass


class User(SQLAlchemyBaseUserTableUUID, Base):
    pass


class Outbox(Base):
    """A mail waiting for a sender process: written in the request, sent later."""

    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    recipient: Mapped[str] = mapped_column(String(320))
    link: Mapped[str] = mapped_column(String(2048))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


engine = create_async_engine(DATABASE_URL)
async_session_maker = async_sessionmaker(engine, expire_on_commit=False)


async def get_async_session() -> AsyncGenerator[AsyncSession, None]:
    async with async_session_maker() as session:
        yield session


async def get_user_db(
    session: Annotated[AsyncSession, Depends(get_async_session)],
) -> AsyncGenerator[SQLAlchemyUserDatabase[User, uuid.UUID], None]:
    yield SQLAlchemyUserDatabase(session, User)


class UserManager(UUIDIDMixin, BaseUserManager[User, uuid.UUID]):
    reset_password_token_secret = SECRET
    verification_token_secret = SECRET

    async def on_after_forgot_password(
        self, user: User, token: str, request: Request | None = None
    ) -> None:
        # The request's own session: the mail is durable before the 202 leaves.
        session = self.user_db.session  # type: ignore[attr-defined]
        mail = Outbox(recipient=user.email, link=RESET_URL + token, created_at=datetime.now(UTC))
        session.add(mail)
        await session.commit()


async def get_user_manager(
    user_db: Annotated[SQLAlchemyUserDatabase[User, uuid.UUID], Depends(get_user_db)],
) -> AsyncGenerator[UserManager, None]:
    yield UserManager(user_db)


class UserRead(schemas.BaseUser[uuid.UUID]):
    pass


class UserCreate(schemas.BaseUserCreate):
    pass


def get_jwt_strategy() -> JWTStrategy[User, uuid.UUID]:
    return JWTStrategy(secret=SECRET, lifetime_seconds=3600)


auth_backend = AuthenticationBackend(
    name="jwt",
    transport=BearerTransport(tokenUrl="auth/jwt/login"),
    get_strategy=get_jwt_strategy,
)
fastapi_users = FastAPIUsers[User, uuid.UUID](get_user_manager, [auth_backend])


async def create_db_and_tables() -> None:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncGenerator[None, None]:
    await create_db_and_tables()
    # Which loop uvicorn chose (uvloop when uvicorn[standard] is installed), for the log.
    loop = type(asyncio.get_running_loop())
    logging.getLogger("uvicorn.error").info(
        "peer: event loop %s.%s", loop.__module__, loop.__name__
    )
    yield


app = FastAPI(lifespan=lifespan)
app.include_router(fastapi_users.get_auth_router(auth_backend), prefix="/auth/jwt", tags=["auth"])
app.include_router(
    fastapi_users.get_register_router(UserRead, UserCreate), prefix="/auth", tags=["auth"]
)
app.include_router(fastapi_users.get_reset_password_router(), prefix="/auth", tags=["auth"])


async def seed(count: int, email: str = "t{k}@bench.example") -> None:
    """Users with emails ``email.format(k=k)`` for k < count: one password hashed once (the
    default Argon2id), rows inserted in one statement; registering each through the API would
    hash ``count`` times."""
    await create_db_and_tables()
    hashed = PasswordHelper().hash("bench-password-0")
    rows = [{"email": email.format(k=k), "hashed_password": hashed} for k in range(count)]
    async with async_session_maker() as session:
        await session.execute(insert(User), rows)
        await session.commit()
    await engine.dispose()


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4) or sys.argv[1] != "seed":
        sys.exit("usage: PEER_DB=path python app.py seed N [EMAIL_FORMAT]")
    asyncio.run(seed(int(sys.argv[2]), *sys.argv[3:]))
