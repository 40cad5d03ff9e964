"""Every guard of the scripts and every step of a turn, broken once on purpose: the tests
named beside it must fail.

Each mutant is one textual change to one file of a copy of the project; the named tests
then run on that copy (against the same Redis, under their own key prefixes) and must
fail — as test failures, not as errors or an empty collection. A guard that can be
removed with every test still green is a guard no test protects.

The default run tries a fixed sixth of the mutants (``sampled``: a few minutes); run
every one with ``pytest tests/mutation -m "slow or not slow"``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COPIED = ("api", "worker", "shared", "cli", "tests", "pyproject.toml")

STORE = "tests/shared/test_store.py"
SCRIPTS = "tests/shared/test_scripts.py"
WAITING = "tests/shared/test_waiting.py"
TURN = "tests/worker/test_turn.py"
MODEL = "tests/worker/test_model_failures.py"
SWEEPER = "tests/worker/test_sweeper.py"
STARTUP = "tests/worker/test_startup.py"
API = "tests/api/test_turns.py"
SESSIONS = "tests/api/test_sessions.py"
HOOKS = "tests/worker/test_webhooks.py"
SSE = "tests/e2e/test_sse.py"
AUTH = "tests/api/test_auth.py"
TENANTS = "tests/api/test_tenants.py"
QUOTAS = "tests/api/test_quotas.py"
STRAT = "tests/shared/test_strategies.py"
DOUBLE = "tests/worker/test_double_texting.py"
E2E_DOUBLE = "tests/e2e/test_double_texting.py"
CH_API = "tests/api/test_channels.py"
CH_E2E = "tests/e2e/test_channels.py"
CH = "shared/channels/"


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


def m(name: str, path: str, old: str, new: str, *tests: str) -> Mutant:
    return Mutant(name, path, old, new, tests)


LUA = "shared/store/scripts/"
MUTANTS = [
    # accept.lua
    m("accept replays a repeated Idempotency-Key", LUA + "accept.lua",
      "if string.sub(seen, sep + 1) == A.fingerprint then",
      "if string.sub(seen, sep + 1) ~= A.fingerprint then",
      f"{STORE}::test_idempotency_key_replays_and_refuses_a_different_body"),
    m("accept caps pending turns", LUA + "accept.lua",
      "if pending >= A.max_pending then", "if false then",
      f"{STORE}::test_accept_refuses_beyond_the_pending_limit"),
    m("accept refuses to clear an unknown session", LUA + "accept.lua",
      'if A.existing_only and redis.call("EXISTS", KEYS[1]) == 0 then', "if false then",
      f"{STORE}::test_clearing_a_session_that_does_not_exist_writes_nothing"),
    m("accept reports a held lock", LUA + "accept.lua",
      'redis.call("EXISTS", KEYS[7]), rec.events_from, rec.strategy,',
      "0, rec.events_from, rec.strategy,",
      f"{STORE}::test_accept_says_whether_a_worker_holds_the_session"),
    m("accept sets the session's expiry", LUA + "accept.lua",
      "expire(A.session_ttl_ms, 1, 5)", "",
      f"{STORE}::test_accept_assigns_sequence_numbers_in_order_and_queues_the_turn"),
    # begin.lua
    m("begin refuses a second holder", LUA + "begin.lua",
      "if holder and holder ~= A.token then", "if false then",
      f"{STORE}::test_begin_refuses_a_second_worker_and_releases_when_empty"),
    m("begin releases the lock of an empty mailbox", LUA + "begin.lua",
      '    if holder then\n      redis.call("DEL", KEYS[1])\n    end\n', "",
      f"{STORE}::test_a_holder_that_finds_nothing_runnable_left_releases_the_lock"),
    m("begin skips a finished head", LUA + "begin.lua",
      "  if is_active(rec) then\n    local group", "  if rec then\n    local group",
      f"{STORE}::test_begin_skips_a_head_that_already_finished"),
    m("begin counts the attempt", LUA + "begin.lua",
      "member.attempt = member.attempt + 1", "member.attempt = member.attempt",
      f"{STRAT}::test_a_message_joining_a_running_group_voids_its_attempt_everywhere"),
    m("begin counts a crash", LUA + "begin.lua",
      "member.crashes = (member.crashes or 0) + 1", "member.crashes = member.crashes or 0",
      f"{TURN}::test_a_turn_started_too_many_times_is_failed_instead_of_retried_forever"),
    m("begin sends only the history window", LUA + "begin.lua",
      'redis.call("LRANGE", KEYS[3], -A.window, -1)', 'redis.call("LRANGE", KEYS[3], 0, -1)',
      f"{TURN}::test_the_prompt_is_the_system_prompt_then_the_window_then_the_message"),
    m("begin refreshes the session's expiry", LUA + "begin.lua",
      "expire(A.session_ttl_ms, 2, 6)", "",
      f"{STORE}::test_begin_refreshes_the_whole_sessions_expiry"),
    m("begin resets the sweeper's backoff", LUA + "begin.lua",
      'redis.call("DEL", KEYS[8])\n', "",
      f"{STORE}::test_rewakes_back_off_until_a_worker_begins"),
    m("begin takes keys only from KEYS", LUA + "begin.lua",
      'redis.call("HGET", KEYS[5], head)', 'redis.call("HGET", A.turns_key, head)',
      SCRIPTS),
    # commit.lua
    m("commit is fenced by the lock token", LUA + "commit.lua",
      'if redis.call("GET", KEYS[1]) ~= A.token then', "if false then",
      f"{STORE}::test_commit_by_a_worker_that_lost_the_lock_writes_nothing"),
    m("commit refuses a finished turn", LUA + "commit.lua",
      'if not is_active(rec) then\n  return {"DUPLICATE"}',
      'if not rec then\n  return {"DUPLICATE"}', f"{STORE}::test_replayed_commit_writes_nothing"),
    m("commit refuses all but the head", LUA + "commit.lua",
      "if covered[1] ~= A.turn_id or covered[A.span] ~= last then", "if false then",
      f"{STORE}::test_commit_out_of_sequence_writes_nothing"),
    m("commit of a clear empties history", LUA + "commit.lua",
      'if rec.kind == "clear" then', "if false then",
      f"{STORE}::test_a_clear_empties_history_in_order_and_has_no_output"),
    m("commit of a failure writes no history", LUA + "commit.lua",
      'elseif A.status == "completed" and #A.messages > 0 then', "elseif #A.messages > 0 then",
      f"{STORE}::test_a_failed_turn_writes_no_history_and_the_session_moves_on"),
    m("commit releases only an empty mailbox", LUA + "commit.lua",
      'if redis.call("LLEN", KEYS[2]) == 0 then', "if true then",
      f"{STORE}::test_commit_records_the_result_and_releases_the_lock_only_when_the_mailbox_is_empty"),
    m("commit appends the final event", LUA + "commit.lua",
      'emit(KEYS[7], member.id, "final", docs[i])',
      "",
      f"{STORE}::test_events_are_kept_for_the_events_ttl_and_trimmed_by_age",
      f"{WAITING}::test_a_waiter_gets_the_finished_turn_when_it_is_committed"),
    m("commit trims old events", LUA + "commit.lua",
      'redis.call("XTRIM", KEYS[7], "MINID"', 'redis.call("XLEN", KEYS[7]',
      f"{STORE}::test_events_are_kept_for_the_events_ttl_and_trimmed_by_age"),
    m("events expire after the events TTL", LUA + "_prelude.lua",
      'redis.call("PEXPIRE", stream, A.events_ttl_ms)', "",
      f"{STORE}::test_events_are_kept_for_the_events_ttl_and_trimmed_by_age"),
    m("events are announced", LUA + "_prelude.lua",
      'redis.call("PUBLISH", A.channel,', 'redis.call("ECHO",',
      f"{WAITING}::test_a_waiter_gets_the_finished_turn_when_it_is_committed"),
    # the small scripts
    m("delta is fenced by the lock token", LUA + "delta.lua",
      'if redis.call("GET", KEYS[1]) ~= A.token then', "if false then",
      f"{STORE}::test_a_delta_from_a_worker_that_lost_the_lock_is_not_written"),
    m("delta of a committed turn is refused", LUA + "delta.lua",
      'if redis.call("LINDEX", KEYS[4], 0) ~= A.turn_id then', "if false then",
      f"{SCRIPTS}::test_a_delta_of_a_turn_already_committed_is_refused_though_the_lock_is_still_held"),
    m("a chat message announces what it cancels", "api/routes/channel_webhooks.py",
      "            announce_cancel=announce,\n", "",
      f"{CH_API}::test_a_chat_message_that_interrupts_another_announces_its_cancellation"),
    m("a poison turn is listed among the dead turns", "worker/turn.py",
      "            await dead.bury(tenant, head.turn, outcome.error)", "            pass",
      f"{TURN}::test_a_turn_started_too_many_times_is_failed_instead_of_retried_forever"),
    m("extend is fenced by the lock token", LUA + "extend.lua",
      'if redis.call("GET", KEYS[1]) ~= A.token then', "if false then",
      f"{STORE}::test_renew_extends_only_the_holders_lease"),
    m("release is fenced by the lock token", LUA + "release.lua",
      'if redis.call("GET", KEYS[1]) ~= A.token then', "if false then",
      f"{STORE}::test_release_refuses_while_the_mailbox_has_entries"),
    m("release refuses while turns are pending", LUA + "release.lua",
      'if not A.force and redis.call("LLEN", KEYS[2]) > 0 then', "if false then",
      f"{STORE}::test_release_refuses_while_the_mailbox_has_entries"),
    m("one sweeper wake-up outstanding", LUA + "rewake.lua",
      'if redis.call("EXISTS", KEYS[1]) == 1 then', "if false then",
      f"{SWEEPER}::test_a_stalled_session_is_woken_once_however_many_sweeps_pass"),
    m("sweeper wake-ups back off", LUA + "rewake.lua",
      "2 ^ math.min(n - 1, 20)", "1",
      f"{STORE}::test_rewakes_back_off_until_a_worker_begins"),
    m("forget only an untouched session", LUA + "forget.lua",
      'if redis.call("ZSCORE", KEYS[1], A.member) == A.score then', "if true then",
      f"{STORE}::test_the_sweeper_forgets_a_session_only_if_untouched_since_it_was_read"),
    # the steps of a turn
    m("the system prompt leads the prompt", "worker/turn.py",
      "        messages.append(SystemMessage(content=settings.system_prompt))\n",
      "        pass\n",
      f"{TURN}::test_the_prompt_is_the_system_prompt_then_the_window_then_the_message"),
    m("the window keeps exchanges whole", "worker/turn.py",
      "docs.to_messages(docs.trim_to_pairs(window))", "docs.to_messages(window)",
      f"{TURN}::test_the_prompt_is_the_system_prompt_then_the_window_then_the_message"),
    m("no wake-up while a worker holds the session", "shared/intake.py",
      "    if accepted.lock_held:\n", "    if False:\n",
      f"{API}::test_no_wake_up_is_sent_while_a_worker_holds_the_session"),
    m("a wake-up for an idle session", "shared/intake.py",
      "            await wake_ups.send(keys.tenant, keys.session)\n", "            pass\n",
      f"{API}::test_every_turn_of_an_idle_session_sends_a_wake_up"),
    m("a turn started too often fails", "worker/turn.py",
      "if turn.crashes >= settings.max_turn_attempts:", "if False:",
      f"{TURN}::test_a_turn_started_too_many_times_is_failed_instead_of_retried_forever"),
    m("a model that cannot be built fails the turn", "worker/turn.py",
      "        return _failed(\"model_unavailable\", str(unavailable))\n",
      "        raise unavailable\n",
      f"{TURN}::test_a_model_that_cannot_be_built_fails_each_turn_with_the_reason"),
    m("429 is retried", "worker/model.py",
      "if status in (408, 409, 429) or status >= 500:", "if status >= 500:",
      f"{MODEL}::test_a_429_with_retry_after_is_retried_after_the_pause_then_succeeds"),
    m("400 is not retried", "worker/model.py",
      "if status in (408, 409, 429) or status >= 500:", "if status >= 400:",
      f"{MODEL}::test_a_request_the_model_refuses_fails_at_once_without_retries"),
    m("Retry-After is honoured", "worker/model.py",
      "pause = transient.retry_after_s\n", "pause = None\n",
      f"{MODEL}::test_a_429_with_retry_after_is_retried_after_the_pause_then_succeeds"),
    m("no retry past the deadline", "worker/model.py",
      "if loop.time() + pause > deadline:", "if False:",
      f"{MODEL}::test_the_turn_deadline_fails_a_turn_whose_retries_would_overrun_it"),
    m("a lost lease cancels the model call", "shared/store/lease.py",
      "            self._guarded.cancel()\n", "            pass\n",
      f"{TURN}::test_a_lost_lease_cancels_the_model_call_at_once"),
    m("a failed renewal loses the lease", "shared/store/lease.py",
      "            if answer == 0:\n                lease.mark_lost()\n",
      "            if answer == 0:\n                pass\n",
      f"{TURN}::test_a_lost_lease_cancels_the_model_call_at_once"),
    m("a refused delta stops the turn", "shared/store/deltas.py",
      "                writer.lease.mark_lost()\n", "                pass\n",
      f"{TURN}::test_a_lock_lost_mid_stream_is_noticed_at_the_next_delta_flush"),
    m("streaming stops once the lock is lost", "shared/store/deltas.py",
      "            await self.flush()\n            writer.lease.check()\n",
      "            await self.flush()\n",
      f"{STORE}::test_streaming_stops_with_lock_lost_once_another_worker_holds_the_session"),
    # webhooks
    m("a commit writes its webhook message", LUA + "commit.lua",
      'if A.webhook ~= "" then', "if false then",
      f"{HOOKS}::test_a_finished_turn_is_posted_to_its_webhook_signed_per_the_spec"),
    m("only public addresses receive webhooks", "shared/addresses.py",
      "    return bool(inner.is_global) and not (", "    return True or not (",
      "tests/shared/test_addresses.py"),
    m("IPv4 inside NAT64 is unwrapped", "shared/addresses.py",
      "        if ip in NAT64 or ip in NAT64_LOCAL:", "        if False:",
      "tests/shared/test_addresses.py"),
    m("redirects are never followed", "worker/webhooks.py",
      "allow_redirects=False", "allow_redirects=True",
      f"{HOOKS}::test_a_redirect_is_a_failure_and_never_followed"),
    m("Retry-After of a webhook receiver is honoured", "worker/webhooks.py",
      "            pause = max(pause, wait)\n", "            pass\n",
      f"{HOOKS}::test_429_is_retried_no_sooner_than_its_retry_after"),
    m("410 disables the endpoint", "worker/webhooks.py",
      "        if status == 410:\n", "        if False:\n",
      f"{HOOKS}::test_410_disables_the_endpoint_and_buries_the_delivery"),
    m("a delivery gives up after its attempts", "worker/webhooks.py",
      "        if delivery.attempts >= self._settings.webhook_max_attempts:\n",
      "        if False:\n",
      f"{HOOKS}::test_a_delivery_that_gives_up_is_a_dead_letter_and_can_be_replayed"),
    m("a refused target is not sent to", "worker/webhooks.py",
      '            delivery.last_error = f"refused: {refused}"\n', "            raise\n",
      f"{HOOKS}::test_a_private_target_is_refused_without_a_connection"),
    m("every valid secret signs", "shared/signing.py",
      '" ".join(signature(s, msg_id, at, body) for s in secrets_)',
      "signature(secrets_[0], msg_id, at, body)",
      f"{HOOKS}::test_a_rotated_secret_and_the_old_one_both_verify"),
    # streaming
    m("a resumed stream skips what it already sent", "shared/store/waiting.py",
      "                if event.position <= position:\n", "                if False:\n",
      f"{WAITING}::test_an_event_both_read_and_announced_is_yielded_once"),
    m("an abandoned try is announced", "shared/store/deltas.py",
      "        self._reset = reset(", "        self._reset = None and reset(",
      f"{SSE}::test_an_abandoned_try_is_announced_and_never_becomes_the_text"),
    m("a dropped cancel still stops a loop", "shared/aio.py",
      "    if task is not None and task.cancelling():\n", "    if False:\n",
      f"{HOOKS}::test_a_sender_stops_when_cancelled_even_if_a_call_below_it_swallows_the_cancel",
      "tests/shared/test_aio.py::test_a_batcher_whose_flush_swallows_its_cancel_still_stops"),
    m("a turn's first text is written at once", "shared/store/deltas.py",
      "            self._batcher.eager(self)\n", "",
      f"{STORE}::test_a_turns_first_text_is_written_at_once_and_the_rest_in_batches"),
    m("an event arriving as a wait runs out counts", "shared/store/waiting.py",
      "        return self._ready  # what arrived as the timer fired counts too\n",
      "        return waiter.result()\n",
      f"{WAITING}::test_an_event_that_arrives_as_the_wait_runs_out_is_not_lost"),
    m("a turn's first text goes alone", "shared/store/deltas.py",
      "await self.flush(None if everyone else list(eager))", "await self.flush(None)",
      f"{STORE}::test_a_turns_first_text_does_not_take_the_other_turns_batches_with_it"),
    m("the API settles its heap", "api/main.py",
      "                        heap.settle()\n", "                        pass\n",
      "tests/shared/test_heap.py::test_the_api_freezes_what_it_built_at_start_and_makes_full_collections_rare"),
    m("a worker settles its heap", "worker/engine.py",
      "                    heap.settle()\n", "                    pass\n",
      "tests/shared/test_heap.py::test_a_worker_does_the_same_once_its_engine_runs"),
    # waiting and the API
    m("a renewed subscription makes waiters read again", "shared/store/waiting.py",
      "            for watcher in watchers:\n                watcher.mark_stale()\n", "",
      f"{WAITING}::test_a_lost_connection_is_renewed_and_waiters_still_get_their_turn"),
    m("waiters are capped", "shared/store/waiting.py",
      "if self._count >= self._max:", "if False:",
      f"{WAITING}::test_waiters_beyond_the_cap_are_refused"),
    m("an accepted turn is never an error", "api/waiting.py",
      "        except Exception as exc:\n", "        except TooManyWaiters as exc:\n",
      f"{API}::test_an_accepted_turn_is_answered_202_whatever_goes_wrong_while_waiting"),
    m("the wait cap is the setting", "api/deps.py",
      "    if wait > cap:\n", "    if wait > 60:\n",
      f"{API}::test_the_wait_cap_can_be_raised_above_sixty_seconds"),
    m("an unknown session is not found", "shared/store/store.py",
      "        if next_seq is None:\n", "        if False:\n",
      f"{SESSIONS}::test_an_unknown_session_is_a_404_problem_everywhere"),
    m("a worker checks its model at start", "worker/engine.py",
      "                models.get()  # raises ModelUnavailable naming the setting to fix\n", "",
      f"{STARTUP}::test_a_worker_refuses_a_model_it_cannot_build_in_one_line"),
    m("a warm shutdown finishes the turns in flight", "worker/engine.py",
      "await asyncio.wait(set(self._draining), timeout=settings.turn_deadline_s)", "pass",
      "tests/e2e/test_recovery.py::test_a_worker_stopped_warmly_finishes_the_turns_it_is_running"),
    m("evicting servers are refused", "shared/redis.py",
      '    if policy == "noeviction":\n        return None\n', "    return None\n",
      f"{STARTUP}::test_the_api_refuses_a_redis_that_evicts_keys_unless_told_otherwise",
      f"{STARTUP}::test_a_worker_refuses_a_redis_that_evicts_keys"),
    # tenants, keys and budgets
    m("a session's keys are its caller's tenant's", "api/deps.py",
      "return state.store.keys(tenant, session_id)",
      "return state.store.keys(state.settings.default_tenant, session_id)",
      f"{TENANTS}::test_another_tenants_ids_answer_as_missing_ones_on_every_endpoint_and_"
      "change_nothing"),
    m("a revoked key is refused", "shared/apikeys.py",
      "or record.revoked:", ":",
      f"{AUTH}::test_a_revoked_key_stops_working_on_every_replica_at_once"),
    m("a key is compared by its digest", "shared/apikeys.py",
      "if not hmac.compare_digest(record.digest, digest(presented))",
      "if not hmac.compare_digest(record.digest, record.digest)",
      f"{AUTH}::test_a_known_key_id_with_a_wrong_secret_is_refused"),
    m("keys are never read from the URL", "api/auth.py",
      "if CREDENTIAL_PARAMS.intersection(",
      "if not CREDENTIAL_PARAMS or CREDENTIAL_PARAMS.isdisjoint(",
      f"{AUTH}::test_a_key_in_the_query_string_is_refused_even_beside_a_valid_header"),
    m("anonymous access is for loopback peers only", "api/auth.py",
      "if is_loopback(client):", "if True:",
      f"{AUTH}::test_without_keys_loopback_clients_are_the_anonymous_tenant_and_others_are_refused"),
    m("every request spends from its tenant's budget", "api/auth.py",
      "await state.quotas.spend_request(tenant)", "pass",
      f"{QUOTAS}::test_a_burst_over_the_request_limit_is_refused_for_that_tenant_only"),
    m("a committed turn settles its tokens", "worker/turn.py",
      "await settle_tokens(rt, keys.tenant, head, outcome)", "pass",
      f"{TURN}::test_a_committed_turn_settles_its_tenants_token_budget_once"),
    m("a full history refuses messages", LUA + "accept.lua",
      "if held + 2 > A.max_history then", "if false then",
      f"{QUOTAS}::test_a_full_history_refuses_new_messages_but_takes_a_clear"),
    # double texting and cancellation
    m("reject refuses while a turn is pending", LUA + "accept.lua",
      'if rec.strategy == "reject" and #active > 0 then', "if false then",
      f"{STRAT}::test_reject_refuses_while_a_turn_is_pending_and_writes_nothing"),
    m("interrupt keeps the cancelled messages", LUA + "accept.lua",
      'local keep = rec.strategy == "interrupt"', "local keep = false",
      f"{STRAT}::test_interrupt_cancels_pending_messages_and_keeps_them_in_order_around_a_clear"),
    m("rollback takes the cancelled turns off the mailbox", LUA + "accept.lua",
      '        redis.call("LREM", KEYS[2], 1, other.id)\n', "",
      f"{STRAT}::test_rollback_cancels_pending_messages_and_drops_them"),
    m("a double text stops the running attempt", LUA + "accept.lua",
      "if stop then\n  stop_attempt(KEYS[1], A.member)\nend", "",
      f"{STRAT}::test_a_message_joining_a_running_group_voids_its_attempt_everywhere"),
    m("refunds count characters, not bytes", LUA + "accept.lua",
      '{other.id, chars(input.content or "")}', '{other.id, string.len(input.content or "")}',
      f"{STRAT}::test_interrupted_turns_are_refunded_by_their_characters"),
    m("begin writes a kept message when its turn leaves", LUA + "begin.lua",
      "if rec and rec.keep then", "if false then",
      f"{STRAT}::test_interrupt_cancels_pending_messages_and_keeps_them_in_order_around_a_clear"),
    m("begin groups the coalesced turns", LUA + "begin.lua",
      "if not joins(other) then", "if true then",
      f"{STRAT}::test_coalesced_messages_form_one_group_after_the_debounce"),
    m("begin waits out the debounce", LUA + "begin.lua",
      "local waiting = due > A.now_ms", "local waiting = false",
      f"{STRAT}::test_coalesced_messages_form_one_group_after_the_debounce"),
    m("begin caps a group", LUA + "begin.lua",
      'redis.call("LRANGE", KEYS[2], 1, A.max_group - 1)', 'redis.call("LRANGE", KEYS[2], 1, -1)',
      f"{STRAT}::test_coalesced_messages_form_one_group_after_the_debounce"),
    m("commit is fenced by the stop generation", LUA + "commit.lua",
      '~= A.generation then\n  return {"STOPPED"}', '== -1 then\n  return {"STOPPED"}',
      f"{STRAT}::test_a_message_joining_a_running_group_voids_its_attempt_everywhere"),
    m("commit names the turn that answered each member", LUA + "commit.lua",
      "    member.answered_by = A.turn_id\n", "",
      f"{STRAT}::test_coalesced_messages_form_one_group_after_the_debounce"),
    m("delta is fenced by the stop generation", LUA + "delta.lua",
      '"stops")) or 0) ~= A.generation then', '"stops")) or 0) == -1 then',
      f"{STRAT}::test_a_message_joining_a_running_group_voids_its_attempt_everywhere"),
    m("extend reports a stopped attempt", LUA + "extend.lua",
      "  return 2\n", "  return 1\n",
      f"{STRAT}::test_a_missed_stop_notice_is_heard_at_the_next_lease_renewal"),
    m("cancel stops a running attempt", LUA + "cancel.lua",
      "if running then\n  stop_attempt(KEYS[1], A.member)\nend", "",
      f"{STRAT}::test_cancel_of_a_queued_a_running_and_a_finished_turn"),
    m("cancel leaves a finished turn as it was", LUA + "cancel.lua",
      'if not is_active(rec) then\n  return {"FINISHED", raw}',
      'if false then\n  return {"FINISHED", raw}',
      f"{STRAT}::test_cancel_of_a_queued_a_running_and_a_finished_turn"),
    m("cancel takes the turn off the mailbox", LUA + "cancel.lua",
      'redis.call("LREM", KEYS[2], 1, rec.id)', "",
      f"{STRAT}::test_cancel_of_a_queued_a_running_and_a_finished_turn"),
    m("a stop notice that overtook begin's answer counts", "shared/store/lease.py",
      "self.stopped = self._noticed > generation", "self.stopped = False",
      f"{STRAT}::test_a_stop_notice_that_overtakes_begins_answer_still_stops_the_attempt"),
    m("a renewal that reports a stop stops the attempt", "shared/store/lease.py",
      "lease.stop(sent + 1)", "pass",
      f"{STRAT}::test_a_missed_stop_notice_is_heard_at_the_next_lease_renewal"),
    m("a stopped attempt begins again", "worker/turn.py",
      "                    stopped += 1\n"
      "                    head = await store.begin(keys, lease.token)\n"
      "                    continue\n",
      "                    stopped += 1\n                    break\n",
      f"{DOUBLE}::test_a_message_joining_a_running_group_restarts_it_after_the_debounce"),
    m("a group waiting out its debounce is queued again", LUA + "begin.lua",
      '          member.status = "queued"\n', "",
      f"{STRAT}::test_a_group_waiting_again_is_queued_and_a_worker_leaving_it_is_no_crash"),
    m("a stopping worker starts no further turn", "worker/turn.py",
      "                if rt.stopping.is_set():  # between turns", "                if False:  #",
      f"{DOUBLE}::test_a_stopping_worker_starts_no_further_turn"),
    m("a stopping worker leaves a debounce wait", "worker/turn.py",
      "event_set_within(rt.stopping, head.wait_s)",
      "event_set_within(asyncio.Event(), head.wait_s)",
      f"{DOUBLE}::test_a_stopping_worker_leaves_a_waiting_group_to_another_at_once"),
    m("members' own webhooks are announced", "worker/turn.py",
      "if any(t.webhook or t.channel for t in group) or", "if turn.webhook or t.channel or",
      f"{DOUBLE}::test_a_coalesced_turn_with_its_own_webhook_is_announced"),
    m("workers follow stop notices", "worker/stops.py",
      "heartbeat.stop(member, int(generation))", "pass",
      f"{E2E_DOUBLE}::test_a_cancel_stops_a_streaming_model_call_within_a_second_and_commits_nothing"),
    # messaging channels
    m("Telegram checks its secret token", CH + "telegram.py",
      'if not hmac.compare_digest(given.encode(), endpoint.credentials["secret_token"].encode()):',
      "if False:",
      f"{CH_E2E}::test_a_forged_signature_is_refused_and_writes_nothing[telegram]"),
    m("Slack checks its signature", CH + "slack.py",
      'if not hmac.compare_digest(given.encode(), ("v0=" + mac.hexdigest()).encode()):',
      "if False:",
      f"{CH_E2E}::test_a_forged_signature_is_refused_and_writes_nothing[slack]"),
    m("Slack refuses an old timestamp", CH + "slack.py",
      "if abs(now_s - int(stamp)) > MAX_SKEW_S:", "if False:",
      f"{CH_E2E}::test_a_slack_request_signed_long_ago_is_refused_as_a_replay"),
    m("WhatsApp checks its signature", CH + "whatsapp.py",
      "if not hmac.compare_digest(given.encode(), expected.encode()):", "if False:",
      f"{CH_E2E}::test_a_forged_signature_is_refused_and_writes_nothing[whatsapp]"),
    m("WhatsApp's handshake needs the verify token", CH + "whatsapp.py",
      'if query.get("hub.mode") != "subscribe" or not hmac.compare_digest(',
      'if query.get("hub.mode") != "subscribe" and not hmac.compare_digest(',
      f"{CH_API}::test_the_whatsapp_subscription_handshake_needs_the_verify_token"),
    m("Twilio checks its signature", CH + "twilio.py",
      "if hmac.compare_digest(given.encode(), signature(token, candidate, params).encode()):",
      "if True:",
      f"{CH_E2E}::test_a_forged_signature_is_refused_and_writes_nothing[twilio]"),
    m("Slack ignores the bot's own messages", CH + "slack.py",
      'or event.get("bot_id") or', "or",
      f"{CH_API}::test_status_callbacks_and_media_from_twilio_and_whatsapp_make_no_turn"),
    m("a platform's message id is its idempotency key", "api/routes/channel_webhooks.py",
      'idempotency_key=f"{endpoint.channel}:{message.id}",', "idempotency_key=None,",
      f"{CH_API}::test_a_redelivered_telegram_update_is_one_turn_that_knows_its_chat"),
    m("a message older than its id is remembered is dropped", "api/routes/channel_webhooks.py",
      "if message.sent_at is not None and time.time() - message.sent_at > horizon_s:",
      "if False:",
      f"{CH_API}::test_a_message_sent_longer_ago_than_ids_are_remembered_is_dropped_as_stale"),
    m("a form body only at a channel webhook", "api/guards.py",
      '    if not CHANNEL_WEBHOOK.fullmatch(scope["path"]):\n        return False\n', "",
      f"{CH_API}::test_a_form_body_is_taken_only_at_a_channel_webhook"),
    m("an unreadable message is answered once", LUA + "reply_once.lua",
      'if not redis.call("SET", KEYS[1], "1", "NX", "PX", A.ttl_ms) then', "if false then",
      f"{CH_API}::test_what_cannot_become_a_turn_is_acknowledged_and_answered_once_if_asked"),
    m("one reply per model call", CH + "lane.py",
      "if route is None or turn.answered_by is not None:", "if route is None:",
      f"{CH_E2E}::test_a_burst_of_messages_gets_one_reply"),
    m("no reply for a cancelled turn", CH + "lane.py",
      'elif turn.status == "failed" and endpoint.failure_reply:', "elif endpoint.failure_reply:",
      f"{CH_E2E}::test_a_cancelled_message_gets_no_reply"),
    m("a refused reply is a dead letter at once", "worker/replies.py",
      "if result is not None and result.permanent:", "if False:",
      f"{CH_E2E}::test_a_reply_the_platform_refuses_is_a_dead_letter_that_can_be_replayed"),
    m("an unresolved platform name is tried again", "worker/replies.py",
      "except TargetUnresolved as unresolved:", "except ZeroDivisionError as unresolved:",
      f"{CH_E2E}::test_a_platform_name_that_does_not_resolve_for_a_while_is_tried_again"),
    m("a chat's replies are paced", "worker/replies.py",
      "await self._lane.sent(keys, claimed, reply, int(interval_s * 1000))",
      "await self._lane.sent(keys, claimed, reply, 0)",
      f"{CH_E2E}::test_a_reply_longer_than_the_platform_takes_arrives_in_parts_in_order"),
]  # fmt: skip


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project's code and tests, mutated per mutant into a fresh copy."""
    base = tmp_path_factory.mktemp("pristine")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, base / name, ignore=ignore)
        else:
            shutil.copy2(source, base / name)
    shutil.rmtree(base / "tests" / "mutation")
    return base


def run_mutant(mutant: Mutant, pristine: Path, redis_url: str, workdir: Path) -> tuple[int, str]:
    """Apply ``mutant`` to a fresh copy and run its tests there: exit code and summary."""
    copy = workdir / "copy"
    shutil.copytree(pristine, copy, symlinks=True)
    target = copy / mutant.path
    text = target.read_text()
    if text.count(mutant.old) != 1:
        return -1, f"{mutant.path} no longer holds the guard as written"
    target.write_text(text.replace(mutant.old, mutant.new))
    env = {**os.environ, "CHATLANE_TEST_REDIS_URL": redis_url, "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
             "-o", "addopts=", "--timeout", "60", *mutant.tests],
            cwd=copy, env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        shutil.rmtree(copy, ignore_errors=True)
        return -2, "its tests hung for 300 s"
    shutil.rmtree(copy, ignore_errors=True)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr
    return done.returncode, summary


@pytest.fixture(scope="module")
def outcomes(
    request: pytest.FixtureRequest,
    pristine: Path,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Future[tuple[int, str]]]]:
    """Every selected mutant, run two at a time (each run is one process of its own)."""
    selected = {
        item.callspec.params["mutant"].name
        for item in request.session.items
        if getattr(item, "callspec", None) is not None and "mutant" in item.callspec.params
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield {
            mutant.name: pool.submit(
                run_mutant, mutant, pristine, redis_url, tmp_path_factory.mktemp("mutant")
            )
            for mutant in MUTANTS
            if mutant.name in selected
        }
        pool.shutdown(cancel_futures=True)


SAMPLE_EVERY = 6


def sampled(mutants: list[Mutant]) -> list[object]:
    """Every mutant; all but every ``SAMPLE_EVERY``-th are marked ``slow`` (the default run
    tries a fixed sixth of them, ``-m slow`` the rest)."""
    return [
        pytest.param(
            mutant, id=mutant.name, marks=() if i % SAMPLE_EVERY == 0 else pytest.mark.slow
        )
        for i, mutant in enumerate(mutants)
    ]


@pytest.mark.timeout(900)  # results come two at a time, in order; a hung mutant ends at 300 s
@pytest.mark.parametrize("mutant", sampled(MUTANTS))
def test_breaking_the_guard_fails_its_tests(
    mutant: Mutant, outcomes: dict[str, Future[tuple[int, str]]]
) -> None:
    code, summary = outcomes[mutant.name].result()
    assert code == 1, f"the tests did not catch it (exit {code}): {summary}"
    assert " failed" in summary and " error" not in summary, summary
