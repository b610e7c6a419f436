-- job: the rules of a job as the pure methods of `Job` (src/job.rs) write
-- them, each once: what a job is (its reads), where it belongs in the
-- store's indexes (placement), and how it changes (its transitions), on
-- the array form of a job (prelude.lua). The functions call them between
-- snapshot() and commit(), which writes the result (bookkeeping.lua).
-- Shared code (see prelude.lua): no KEYS or ARGV of its own; it only
-- defines functions.

-- ---- What a job is (the pure reads of Job) ----

local function is_terminal(status)
  return status ~= S_QUEUED and status ~= S_IN_PROGRESS
end

local function delivering(j)
  return j[I_WH_STATUS] == D_PENDING
end

-- Job::is_runnable
local function is_runnable(j)
  -- No retry time (NONE) comes before any time.
  return j[I_STATUS] == S_QUEUED and j[I_QUEUE_DEADLINE] > NOW and j[I_RETRY_AT] <= NOW
end

-- Whether a job waits out a backoff because the upstream was unavailable
-- (schedule.rs, waits_for_upstream): what the index {ns}:unavailable holds.
local function waits_for_upstream(j)
  return j[I_STATUS] == S_QUEUED and j[I_RETRY_AT] >= 0 and j[I_RETRY_UNAVAILABLE] == 1
end

-- Job::is_forgotten: a job whose webhook is still being delivered is kept.
local function is_forgotten(j)
  local expires_at = j[I_EXPIRES_AT]
  return not delivering(j) and expires_at >= 0 and expires_at <= NOW
end

-- Where a job belongs in the store's indexes, all four at once (one call,
-- as snapshot() and commit() both need them all):
--   due       Job::next_due: its score in the due index (nil: not there)
--   ready     whether it is in its level's ready list (queued, no retry)
--   delivery  Job::delivery_ready_at: its score in the deliveries (nil: not there)
--   kept      whether its key must stay (not ended, or a delivery pending)
local function placement(j)
  local status, pending = j[I_STATUS], delivering(j)
  local delivery = nil
  if pending and j[I_WH_LEASE_TOKEN] < 0 and j[I_WH_NEXT_ATTEMPT_AT] >= 0 then
    delivery = j[I_WH_NEXT_ATTEMPT_AT]
  end
  local due
  if status == S_QUEUED then
    local retry_at, deadline = j[I_RETRY_AT], j[I_QUEUE_DEADLINE]
    if retry_at >= 0 then
      return math.min(retry_at, deadline), false, delivery, true
    end
    return deadline, true, delivery, true
  elseif status == S_IN_PROGRESS then
    due = j[I_LEASE_UNTIL]
  elseif pending then
    -- A pending delivery keeps the job: its lapsing lease or its next
    -- attempt is what comes due first.
    due = j[I_WH_LEASE_UNTIL]
    if due < 0 then
      due = j[I_WH_NEXT_ATTEMPT_AT]
    end
  else
    -- Ended with nothing to deliver: due when it is forgotten.
    due = j[I_EXPIRES_AT]
    return due >= 0 and due or nil, false, delivery, false
  end
  return due >= 0 and due or nil, false, delivery, true
end

-- Job::check_lease
local function holds_lease(j, token)
  local lease = j[I_LEASE_TOKEN]
  return j[I_STATUS] == S_IN_PROGRESS and lease >= 0 and lease == tonumber(token)
end

-- What commit() compares against. A script changes one job at a time
-- (snapshot, change, commit), so one table serves every snapshot.
local SNAPSHOT = {}
local function snapshot(j)
  local b = SNAPSHOT
  b.status, b.retrying, b.revision = j[I_STATUS], j[I_RETRY_AT] >= 0, j[I_REVISION]
  b.waits = waits_for_upstream(j)
  b.due, b.ready, b.delivery, b.kept = placement(j)
  return b
end

-- ---- The transitions of Job ----

-- Job::touch
local function touch(j, status)
  j[I_STATUS] = status
  j[I_STATUS_AT] = NOW
  j[I_REVISION] = j[I_REVISION] + 1
end

-- An error is its code and its message, written and deleted together: with
-- no code there is no message to delete either.
local function set_error(j, code, message)
  if code == nil or code == '' then
    if j[I_HAS_ERROR] == 1 then
      put(j, 'error_code', nil)
      put(j, 'error_message', nil)
      j[I_HAS_ERROR] = 0
    end
  else
    put(j, 'error_code', code)
    put(j, 'error_message', message)
    j[I_HAS_ERROR] = 1
  end
end

-- A finished attempt's response and error (complete and retry_later).
local function put_outcome(j, has_response, status, headers, body, code, message)
  if has_response == '1' then
    put(j, 'resp_status', status)
    put(j, 'resp_headers', headers)
    put(j, 'resp_body', body)
  end
  set_error(j, code, message)
end

-- Job::claim: starts an attempt with a fresh lease; the lease's token, or
-- nil if the job is not runnable.
local function claim_job(j, lease_ms)
  if not is_runnable(j) then
    return nil
  end
  local claims = j[I_CLAIMS] + 1
  j[I_CLAIMS] = claims
  j[I_LEASE_TOKEN] = claims
  j[I_LEASE_UNTIL] = NOW + lease_ms
  j[I_ATTEMPTS] = j[I_ATTEMPTS] + 1
  j[I_RETRY_AT] = NONE
  j[I_STARTED_AT] = NOW
  -- The previous attempt's error no longer describes the job (the last
  -- response stays: a final failure keeps it).
  set_error(j, nil)
  touch(j, S_IN_PROGRESS)
  return claims
end

-- Job::end: every way a job ends (a completion, an expiry, a lease lapsing
-- for the last time, a cancel) goes through here.
local function end_job(j, status)
  touch(j, status)
  j[I_LEASE_TOKEN] = NONE
  j[I_LEASE_UNTIL] = NONE
  j[I_RETRY_AT] = NONE
  j[I_COMPLETED_AT] = NOW
  j[I_EXPIRES_AT] = NOW + j[I_RESULT_TTL_MS]
  if j[I_HAS_WEBHOOK] == 1 then
    j[I_WH_STATUS] = D_PENDING
    j[I_WH_ATTEMPTS] = 0
    j[I_WH_LAST_STATUS_CODE] = NONE
    put(j, 'wh_last_error', nil)
    j[I_WH_NEXT_ATTEMPT_AT] = NOW
    j[I_WH_LEASE_TOKEN] = NONE
    j[I_WH_LEASE_UNTIL] = NONE
    j[I_WH_CLAIMS] = 0
  end
end

-- Job::expire_if_due
local function expire_if_due(j)
  if j[I_STATUS] ~= S_QUEUED or j[I_QUEUE_DEADLINE] > NOW then
    return false
  end
  local waited = math.floor(math.max(j[I_QUEUE_DEADLINE] - j[I_CREATED_AT], 0) / 1000)
  set_error(j, 'queue_timeout', 'not started within its ' .. n2s(waited) .. ' s queue deadline')
  end_job(j, S_EXPIRED)
  return true
end

-- Job::lapse_if_due: back to the queue without spending the attempt, or,
-- at the MAX_LAPSES-th lapse, failed as abandoned.
local function lapse_if_due(j)
  if not (j[I_LEASE_TOKEN] >= 0 and j[I_STATUS] == S_IN_PROGRESS and j[I_LEASE_UNTIL] <= NOW) then
    return false
  end
  j[I_ATTEMPTS] = math.max(j[I_ATTEMPTS] - 1, 0)
  j[I_LAPSES] = j[I_LAPSES] + 1
  if j[I_LAPSES] >= MAX_LAPSES then
    set_error(j, 'abandoned', 'abandoned by its workers: their leases lapsed '
      .. n2s(MAX_LAPSES) .. ' times (it may be crashing them)')
    end_job(j, S_FAILED)
  else
    set_error(j, 'lease_expired', 'the worker running it stopped renewing its lease')
    j[I_LEASE_TOKEN] = NONE
    j[I_LEASE_UNTIL] = NONE
    touch(j, S_QUEUED)
  end
  return true
end

-- Job::lapse_delivery_if_due
local function lapse_delivery_if_due(j)
  if not (j[I_WH_LEASE_TOKEN] >= 0 and j[I_WH_LEASE_UNTIL] <= NOW) then
    return false
  end
  j[I_WH_LEASE_TOKEN] = NONE
  j[I_WH_LEASE_UNTIL] = NONE
  j[I_WH_NEXT_ATTEMPT_AT] = NOW
  return true
end

-- Job::claim_delivery: the new lease token, or nil.
local function claim_delivery(j, lease_ms)
  local _, _, at = placement(j)
  if at == nil or at > NOW then
    return nil
  end
  local claims = math.max(j[I_WH_CLAIMS], 0) + 1
  j[I_WH_CLAIMS] = claims
  j[I_WH_LEASE_TOKEN] = claims
  j[I_WH_LEASE_UNTIL] = NOW + lease_ms
  return claims
end

-- Job::cancel
local function cancel_job(j)
  if is_terminal(j[I_STATUS]) then
    return false
  end
  set_error(j, 'canceled', 'canceled by the client')
  end_job(j, S_CANCELED)
  return true
end
