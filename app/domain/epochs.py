"""Runner epochs: an instance that the engine has not seen running since the last Redis loss or re-list is
never handed out.

Each runner has an `epoch`, bumped whenever what the engine saw of it may be incomplete:
- the event applier found the stream or its group gone (a flush, a restart without persistence): events
  published before were lost, so a crash or a vanishing may never have reached the database;
- the observer (re)starts a runner's stream: it re-lists, because it may have missed changes.
Each instance carries `seen_epoch`, the epoch at which it was last seen running. The claim (and a
reservation's hand-off) takes only instances whose `seen_epoch` is the runner's current epoch, so after a
bump nothing is handed out until the observer's re-list has seen it running again (its first full listing
after the bump confirms every instance it lists running, with an event of kind `seen`).

Who stamps `seen_epoch` (always the event applier, which writes observed state):
- a state event that makes an instance `running` stamps the epoch the event carries (the observer's, from
  the stream it watched), or the current epoch when it carries none (a provider task's fresh answer);
- a `seen` event stamps its epoch on an instance still `running` (a compare-and-set on the state).
A stale epoch (lower than the runner's current one) stamps a value the claim refuses, which is the point.
"""
from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import aliased
from sqlmodel import Session

from app.models import Instance, Pool, Runner

_P, _R = aliased(Pool), aliased(Runner)


def runner_epoch_of(pool_id: sa.ColumnElement | str) -> sa.ScalarSelect:
    """The current epoch of the pool's runner, as a scalar subquery (0 for a pool without a runner)."""
    return (sa.select(sa.func.coalesce(sa.func.max(_R.epoch), 0)).select_from(_P).join(_R, _R.id == _P.runner_id)
            .where(_P.id == pool_id).scalar_subquery())


def current_in(pool_id: sa.ColumnElement | str) -> sa.ColumnElement:
    """An instance of this pool seen at its runner's current epoch (`pool_id`: the pool's id, or an expression
    naming it; a probe of one pool names it once per statement rather than once per instance)."""
    return Instance.seen_epoch >= runner_epoch_of(pool_id)


CURRENT = current_in(Instance.pool_id)
"""The claim's epoch condition (seen_epoch never exceeds the runner's epoch, so >= is equality). In SQL:
instances.seen_epoch >= (SELECT coalesce(max(r.epoch), 0) FROM pools p JOIN runners r ON r.id = p.runner_id
WHERE p.id = instances.pool_id)."""


def bump(runner_id: str, *, session: Session) -> int:
    """Start a new epoch for one runner (the observer, before it re-lists); returns it."""
    return int(session.execute(
        sa.update(Runner).where(Runner.id == runner_id).values(epoch=Runner.epoch + 1)
        .returning(Runner.epoch).execution_options(synchronize_session=False)
    ).scalar_one_or_none() or 0)


def bump_all(*, session: Session) -> int:
    """Start a new epoch for every runner (the applier, after Redis lost the event stream); returns how many."""
    return session.execute(
        sa.update(Runner).values(epoch=Runner.epoch + 1).execution_options(synchronize_session=False)
    ).rowcount


def current(runner_id: str, *, session: Session) -> int:
    return int(session.execute(sa.select(Runner.epoch).where(Runner.id == runner_id)).scalar_one_or_none() or 0)


def stamp_value(pool_id: str, epoch: int | None) -> sa.ColumnElement | int:
    """What `seen_epoch` becomes when an instance is seen running: the event's epoch, or the current one."""
    return epoch if epoch is not None else runner_epoch_of(pool_id)


def confirm(instance_id: str, epoch: int, *, session: Session) -> bool:
    """A re-list saw the instance running at `epoch`: stamp it if it is still running (compare-and-set on the
    state) and not already stamped as recent. True if it changed."""
    return session.execute(
        sa.update(Instance).where(Instance.id == instance_id, Instance.state == "running",
                                  Instance.seen_epoch < epoch).values(seen_epoch=epoch)
        .execution_options(synchronize_session=False)
    ).rowcount == 1
