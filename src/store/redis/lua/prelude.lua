-- prelude: what every function of tower-defer's Redis library shares (see
-- functions.rs; only the generated lua/life.lua comes before it). Redis
-- runs it once, when the library is loaded; each function then starts with
-- begin(KEYS, ARGV). It mirrors the pure transitions of `Job` (src/job.rs)
-- and the bookkeeping of `MemoryStore::transition` (src/store/memory.rs):
-- keep the three in step.
--
-- KEYS and ARGV every function takes first (keys.rs passes them); its own
-- follow, from KEYS[9] and ARGV[3]:
-- KEYS[1..3]  {ns}:ready:0|1|2  runnable jobs per priority (score = global sequence)
-- KEYS[4]     {ns}:due          each job's Job::next_due() in ms
-- KEYS[5]     {ns}:seq          the sequence behind the ready scores
-- KEYS[6]     {ns}:n:retrying   queued jobs waiting out a backoff
-- KEYS[7]     {ns}:n:in_progress
-- KEYS[8]     {ns}:deliveries   webhook deliveries nobody holds, by Job::delivery_ready_at()
-- ARGV[1]     the key prefix "{ns}:"
-- ARGV[2]     now (ms, the caller's clock)
--
-- Only constants may be computed here, at load time: Redis gives a
-- library's top level no more than the language itself.
--
-- A script that must reach a job it found inside Redis (the head of a ready
-- or due zset) builds that job's key from ARGV[1]. Every such key carries the
-- same {ns} hash tag as the declared KEYS, so all of them live in one hash
-- slot: the layout Redis Cluster requires of a script in practice.

-- The keys, the prefix, the time and the channels of the call being run
-- (begin sets them).
local READY, DUE, SEQ, N_RETRYING, N_IN_PROGRESS, DELIVERIES
local PREFIX, NOW, CHANGED, WORK, DELIVER
-- Redis drops a finished job's key itself this long after its expires_at;
-- until then reads treat it as gone (slack for clock skew between hosts).
local EXPIRY_SLACK_MS = 60000

-- A job's lifecycle scalars live in one field of its hash, 'life': one
-- little-endian double each, -1 for none. Every value is a count, a flag or
-- a time in ms, whole and below 2^53, so a double holds it exactly. One HGET
-- and one struct.unpack read them all, where fields of their own would cost
-- a Lua string per field, a tonumber per number and a string.format per
-- write. The options' durations, which no script reads,
-- are there too: fewer fields make every read and write of the hash
-- cheaper. The strings a transition writes (error code and message, the
-- last webhook error) stay fields of their own; a flag in 'life' says
-- whether each string field a script needs is there.
--
-- The Lua that knows the order comes before this prelude, written by
-- life.rs from its list of scalars (lua/life.lua): LIFE_SET (the names),
-- unpack_life(key, id, life) (a job table, built by one constructor
-- so Lua sizes it once), pack_life(j) (one struct.pack, no table), and
-- I_<NAME> and N_LIFE for claim and complete, which work on the packed
-- values in an array (below).

-- Every number here is a whole number of milliseconds or a count, below
-- 2^53: '%d' prints it exactly, and costs far less than '%.0f' or the
-- '%.17g' redis.call uses for a number argument (both go through the C
-- library's floating-point printing): numbers reach redis.call as n2s().
local function n2s(n)
  return string.format('%d', n)
end

-- An empty table, never written to: what a function that changed nothing
-- reads or returns.
local NOTHING = {}

-- Answers that carry nothing of their own, made once (Redis only reads an
-- answer's table). Redis turns each table of an answer into RESP only after
-- asking it for its special fields ('err', 'ok', 'double'...), so claim and
-- complete answer a bare string where they can.
local CREATED, FULL = {'created'}, {'full'}

local function job_key(id)
  return PREFIX .. 'job:' .. id
end

-- The job's lifecycle scalars, or nil if there is no such job.
local function load(key, id)
  local life = redis.call('HGET', key, 'life')
  if not life then
    return nil
  end
  return unpack_life(key, id, life)
end

-- The method and the path and query that begin a job's 'request' field
-- (codec.rs, encode_request: a version byte, then each a part of four bytes
-- of big-endian length and its bytes), as one string: what an idempotency
-- key compares, with the body (not the headers that follow).
local function request_head(request)
  local method_len = struct.unpack('>I4', request, 2)
  local path_len = struct.unpack('>I4', request, 6 + method_len)
  return string.sub(request, 1, 9 + method_len + path_len)
end

-- The key of the job's idempotency slot, or nil.
local function slot_of(j)
  if j.has_slot == 1 then
    return redis.call('HGET', j.key, 'idempotency_slot')
  end
  return nil
end

-- Records a change for commit(): a scalar of 'life', or a field of its own
-- (j.set and j.del are made when first needed: most transitions change
-- only 'life').
local function put(j, f, v)
  if LIFE_SET[f] then
    j.life_changed = true
  elseif v == nil then
    j.del = j.del or {}
    j.del[f] = true
    if j.set then
      j.set[f] = nil
    end
  else
    j.set = j.set or {}
    j.set[f] = v
    if j.del then
      j.del[f] = nil
    end
  end
  j[f] = v
end

local function is_terminal(status)
  return status ~= 'queued' and status ~= 'in_progress'
end

local function is_ready(j)
  return j.status == 'queued' and j.retry_at == nil
end

local function delivering(j)
  return j.wh_status == 'pending'
end

-- Job::is_forgotten: a job whose webhook is still being delivered is kept.
local function is_forgotten(j)
  return not delivering(j) and j.expires_at ~= nil and j.expires_at <= NOW
end

-- Job::next_due
local function next_due(j)
  if j.status == 'queued' then
    if j.retry_at then
      return math.min(j.retry_at, j.queue_deadline)
    end
    return j.queue_deadline
  elseif j.status == 'in_progress' then
    return j.lease_until
  elseif delivering(j) then
    return j.wh_lease_until or j.wh_next_attempt_at
  end
  return j.expires_at
end

-- Job::delivery_ready_at
local function delivery_ready_at(j)
  if delivering(j) and j.wh_lease_token == nil then
    return j.wh_next_attempt_at
  end
  return nil
end

-- What commit() compares against.
local function snapshot(j)
  return {status = j.status, retry_at = j.retry_at, revision = j.revision,
    due = next_due(j), ready = is_ready(j), delivery = delivery_ready_at(j),
    kept = not is_terminal(j.status) or delivering(j)}
end

-- Job::touch
local function touch(j, status)
  put(j, 'status', status)
  put(j, 'status_at', NOW)
  put(j, 'revision', j.revision + 1)
end

-- An error is its code and its message, written and deleted together: with
-- no code there is no message to delete either.
local function set_error(j, code, message)
  if code == nil or code == '' then
    if j.has_error == 1 then
      put(j, 'error_code', nil)
      put(j, 'error_message', nil)
      put(j, 'has_error', 0)
    end
  else
    put(j, 'error_code', code)
    put(j, 'error_message', message)
    put(j, 'has_error', 1)
  end
end

-- Job::end
local function finish_as(j, status)
  touch(j, status)
  put(j, 'lease_token', nil)
  put(j, 'lease_until', nil)
  put(j, 'retry_at', nil)
  put(j, 'completed_at', NOW)
  put(j, 'expires_at', NOW + j.result_ttl_ms)
  if j.has_webhook == 1 then
    put(j, 'wh_status', 'pending')
    put(j, 'wh_attempts', 0)
    put(j, 'wh_last_status_code', nil)
    put(j, 'wh_last_error', nil)
    put(j, 'wh_next_attempt_at', NOW)
    put(j, 'wh_lease_token', nil)
    put(j, 'wh_lease_until', nil)
    put(j, 'wh_claims', 0)
  end
end

-- Job::expire_if_due
local function expire_if_due(j)
  if j.status ~= 'queued' or j.queue_deadline > NOW then
    return false
  end
  local waited = math.floor(math.max(j.queue_deadline - j.created_at, 0) / 1000)
  set_error(j, 'queue_timeout', 'not started within its ' .. n2s(waited) .. ' s queue deadline')
  finish_as(j, 'expired')
  return true
end

-- Job::lapse_if_due
local function lapse_if_due(j)
  if not (j.lease_token and j.status == 'in_progress' and j.lease_until <= NOW) then
    return false
  end
  set_error(j, 'lease_expired', 'the worker running it stopped renewing its lease')
  if j.attempts >= j.max_attempts then
    finish_as(j, 'failed')
  else
    put(j, 'lease_token', nil)
    put(j, 'lease_until', nil)
    touch(j, 'queued')
  end
  return true
end

-- Job::lapse_delivery_if_due
local function lapse_delivery_if_due(j)
  if not (j.wh_lease_token and j.wh_lease_until <= NOW) then
    return false
  end
  put(j, 'wh_lease_token', nil)
  put(j, 'wh_lease_until', nil)
  put(j, 'wh_next_attempt_at', NOW)
  return true
end

-- Job::claim_delivery: the new lease token, or nil.
local function claim_delivery(j, lease_ms)
  local at = delivery_ready_at(j)
  if at == nil or at > NOW then
    return nil
  end
  put(j, 'wh_claims', (j.wh_claims or 0) + 1)
  put(j, 'wh_lease_token', j.wh_claims)
  put(j, 'wh_lease_until', NOW + lease_ms)
  return j.wh_claims
end

-- Job::check_lease
local function holds_lease(j, token)
  return j.status == 'in_progress' and j.lease_token ~= nil and j.lease_token == tonumber(token)
end

-- Job::cancel
local function cancel_job(j)
  if is_terminal(j.status) then
    return false
  end
  set_error(j, 'canceled', 'canceled by the client')
  finish_as(j, 'canceled')
  return true
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

-- The bookkeeping of the jobs one script changes: the counters, the ready
-- lists, the due index, the deliveries and the messages. Each call from Lua
-- costs Redis more than the command itself, so a script that changes many
-- jobs (claim, complete) gathers them here and writes each key once at the
-- end (flush); the others write at once. Nothing in between reads them: a
-- gathering script pages the ready lists by offset (see claim.lua).
-- Each part of it is made when first needed: a call that claims or
-- completes one job would otherwise make a dozen tables it never fills.
local gathered = nil

local function gather()
  gathered = {}
end

-- A channel's message is the ids it is about, separated by spaces.
local function publish(channel, id)
  if gathered then
    local published = gathered.published
    if not published then
      published = {}
      gathered.published = published
    end
    local ids = published[channel]
    if not ids then
      ids = {}
      published[channel] = ids
    end
    ids[#ids + 1] = id
  else
    redis.call('PUBLISH', channel, id)
  end
end

local function count(key, by)
  if gathered then
    local counts = gathered.counts
    if not counts then
      counts = {}
      gathered.counts = counts
    end
    counts[key] = (counts[key] or 0) + by
  else
    redis.call('INCRBY', key, n2s(by))
  end
end

-- Puts `id` in (with `score`) or out of (`false`) a sorted set indexed by
-- time (the due index, the deliveries).
local function index(zset, id, score)
  if gathered then
    local part = zset == DUE and 'due' or 'deliveries'
    local pending = gathered[part]
    if not pending then
      pending = {}
      gathered[part] = pending
    end
    pending[id] = score
  elseif score then
    redis.call('ZADD', zset, n2s(score), id)
  else
    redis.call('ZREM', zset, id)
  end
end

-- Takes `id` out of (`ready` false) or puts it at the end of a ready list.
-- Only the taking out is gathered (the claims of a batch; a job put in
-- goes in at once, at the end, which moves none of the offsets a claim
-- pages by); a job put back in after it was taken out in the same call
-- stays in.
local function set_ready(level, id, ready)
  if ready then
    if gathered and gathered.unready then
      gathered.unready[id] = nil
    end
    redis.call('ZADD', READY[level], n2s(redis.call('INCR', SEQ)), id)
  elseif gathered then
    local unready = gathered.unready
    if not unready then
      unready = {}
      gathered.unready = unready
    end
    unready[id] = level
  else
    redis.call('ZREM', READY[level], id)
  end
end

-- Writes a time index's gathered changes: one ZADD and one ZREM at most.
local function flush_index(zset, pending)
  if not pending then
    return
  end
  local add, gone = nil, nil
  for id, score in pairs(pending) do
    if score then
      add = add or {}
      add[#add + 1] = n2s(score)
      add[#add + 1] = id
    else
      gone = gone or {}
      gone[#gone + 1] = id
    end
  end
  if add then
    redis.call('ZADD', zset, unpack(add))
  end
  if gone then
    redis.call('ZREM', zset, unpack(gone))
  end
end

-- Writes what was gathered, one command per key, and stops gathering.
local function flush()
  local g = gathered
  gathered = nil
  if not g then
    return
  end
  for key, by in pairs(g.counts or NOTHING) do
    if by ~= 0 then
      redis.call('INCRBY', key, n2s(by))
    end
  end
  flush_index(DUE, g.due)
  flush_index(DELIVERIES, g.deliveries)
  if g.unready then
    local gone = {}
    for id, level in pairs(g.unready) do
      local ids = gone[level]
      if not ids then
        ids = {}
        gone[level] = ids
      end
      ids[#ids + 1] = id
    end
    for level, ids in pairs(gone) do
      redis.call('ZREM', READY[level], unpack(ids))
    end
  end
  for channel, ids in pairs(g.published or NOTHING) do
    redis.call('PUBLISH', channel, table.concat(ids, ' '))
  end
end

local function account(status, retrying, sign)
  if status == 'queued' and retrying then
    count(N_RETRYING, sign)
  elseif status == 'in_progress' then
    count(N_IN_PROGRESS, sign)
  end
end

-- Writes a changed job back and keeps the counters, the ready lists and the
-- due index in step with it; publishes the change (MemoryStore::transition).
local function commit(j, b)
  local level = j.priority + 1
  account(b.status, b.retry_at ~= nil, -1)
  account(j.status, j.retry_at ~= nil, 1)
  local due = next_due(j)
  if due ~= b.due then
    index(DUE, j.id, due or false)
  end
  local delivery = delivery_ready_at(j)
  if delivery ~= b.delivery then
    index(DELIVERIES, j.id, delivery or false)
    if delivery then
      publish(DELIVER, j.id)
    end
  end
  local ready = is_ready(j)
  if b.ready and not ready then
    set_ready(level, j.id, false)
  elseif ready and not b.ready then
    set_ready(level, j.id, true)
    put(j, 'ready_at', NOW)
    publish(WORK, j.id)
  elseif j.retry_at and not b.retry_at then
    -- Waiting for a retry: idle workers must learn when it comes due.
    publish(WORK, j.id)
  end
  local args = {}
  if j.life_changed then
    args[1] = 'life'
    args[2] = pack_life(j)
  end
  for f, v in pairs(j.set or NOTHING) do
    args[#args + 1] = f
    if type(v) == 'number' then
      args[#args + 1] = n2s(v)
    else
      args[#args + 1] = v
    end
  end
  if #args > 0 then
    redis.call('HSET', j.key, unpack(args))
  end
  if j.del then
    local gone = {}
    for f in pairs(j.del) do
      gone[#gone + 1] = f
    end
    -- A field put back after it was deleted leaves j.del empty.
    if #gone > 0 then
      redis.call('HDEL', j.key, unpack(gone))
    end
  end
  -- Redis forgets a finished job itself, unless a delivery still needs it.
  if b.kept and is_terminal(j.status) and not delivering(j) then
    local at = n2s(j.expires_at + EXPIRY_SLACK_MS)
    redis.call('PEXPIREAT', j.key, at)
    local slot = slot_of(j)
    if slot then
      redis.call('PEXPIREAT', slot, at)
    end
  end
  if j.revision ~= b.revision then
    publish(CHANGED, j.id)
  end
end

-- ---- Claim and complete, on the packed scalars ----
-- A claim and a completion are most of what Redis does for a job. The
-- other transitions work on the job table (unpack_life) with put() and
-- commit(); these two work on the scalars as struct.unpack gives them, in
-- an array (I_<NAME> the places, -1 for none, codes for the statuses), and
-- write what Job::claim (src/job.rs) or finish_as and then commit() would,
-- as building the job table, its snapshot and put()'s calls would cost
-- more than the step itself. The store conformance tests and the model test
-- (tests/store_model) hold both ways to MemoryStore's transitions: keep
-- these in step with Job::claim, finish_as and commit.
local S_QUEUED, S_IN_PROGRESS = STATUS_CODE.queued, STATUS_CODE.in_progress
local D_PENDING = DELIVERY_CODE.pending

local function life_array(life)
  return {struct.unpack(LIFE_FORMAT, life)}
end

local function pack_array(t)
  return struct.pack(LIFE_FORMAT, unpack(t, 1, N_LIFE))
end

-- Job::claim of a job read from a ready list: nil if it is not runnable
-- (Job::is_runnable), else its new 'life' and the fields the claim
-- deleted. A queued job past its queue deadline is the caller's to expire
-- first (expire_if_due).
local function claim_packed(key, id, t, lease_ms)
  local retry_at = t[I_RETRY_AT]
  if t[I_STATUS] ~= S_QUEUED or t[I_QUEUE_DEADLINE] <= NOW or retry_at > NOW then
    return nil
  end
  -- What commit() compares against (snapshot): a queued job is due at its
  -- queue deadline, or at its retry if that comes first; ready when it
  -- waits for no retry. It has no webhook delivery yet.
  local retrying = retry_at >= 0
  local due_before = retrying and math.min(retry_at, t[I_QUEUE_DEADLINE]) or t[I_QUEUE_DEADLINE]
  local claims = t[I_CLAIMS] + 1
  t[I_CLAIMS] = claims
  t[I_LEASE_TOKEN] = claims
  t[I_LEASE_UNTIL] = NOW + lease_ms
  t[I_ATTEMPTS] = t[I_ATTEMPTS] + 1
  t[I_RETRY_AT] = -1
  t[I_STARTED_AT] = NOW
  -- The previous attempt's error no longer describes the job.
  local gone = NOTHING
  if t[I_HAS_ERROR] == 1 then
    gone = {'error_code', 'error_message'}
    t[I_HAS_ERROR] = 0
  end
  t[I_STATUS] = S_IN_PROGRESS
  t[I_STATUS_AT] = NOW
  t[I_REVISION] = t[I_REVISION] + 1
  if retrying then
    count(N_RETRYING, -1)
  end
  count(N_IN_PROGRESS, 1)
  if t[I_LEASE_UNTIL] ~= due_before then
    index(DUE, id, t[I_LEASE_UNTIL])
  end
  if not retrying then
    set_ready(t[I_PRIORITY] + 1, id, false)
  end
  local life = pack_array(t)
  redis.call('HSET', key, 'life', life)
  if #gone > 0 then
    redis.call('HDEL', key, unpack(gone))
  end
  publish(CHANGED, id)
  return life, gone
end

-- Job::end of the job at `key` with its outcome (put_outcome, finish_as),
-- if the lease `token` still holds it (holds_lease); false if not.
local function complete_packed(key, id, token, status, has_response, resp_status, headers, body, code, message)
  local life = redis.call('HGET', key, 'life')
  if not life then
    return false
  end
  local t = life_array(life)
  local lease = t[I_LEASE_TOKEN]
  if t[I_STATUS] ~= S_IN_PROGRESS or lease < 0 or lease ~= tonumber(token) then
    return false
  end
  -- snapshot: a running job is due when its lease ends, is in no ready
  -- list and has no delivery waiting.
  local due_before = t[I_LEASE_UNTIL]
  local delivery_before = nil
  if t[I_WH_STATUS] == D_PENDING and t[I_WH_LEASE_TOKEN] < 0 then
    delivery_before = t[I_WH_NEXT_ATTEMPT_AT]
  end
  local set = {'life', false}
  local gone = nil
  if has_response == '1' then
    set[3], set[4], set[5], set[6], set[7], set[8] =
      'resp_status', resp_status, 'resp_headers', headers, 'resp_body', body
  end
  if code == '' then
    if t[I_HAS_ERROR] == 1 then
      gone = {'error_code', 'error_message'}
      t[I_HAS_ERROR] = 0
    end
  else
    set[#set + 1] = 'error_code'
    set[#set + 1] = code
    set[#set + 1] = 'error_message'
    set[#set + 1] = message
    t[I_HAS_ERROR] = 1
  end
  t[I_STATUS] = STATUS_CODE[status]
  t[I_STATUS_AT] = NOW
  t[I_REVISION] = t[I_REVISION] + 1
  t[I_LEASE_TOKEN] = -1
  t[I_LEASE_UNTIL] = -1
  t[I_RETRY_AT] = -1
  t[I_COMPLETED_AT] = NOW
  t[I_EXPIRES_AT] = NOW + t[I_RESULT_TTL_MS]
  local delivering = t[I_HAS_WEBHOOK] == 1
  if delivering then
    t[I_WH_STATUS] = D_PENDING
    t[I_WH_ATTEMPTS] = 0
    t[I_WH_LAST_STATUS_CODE] = -1
    t[I_WH_NEXT_ATTEMPT_AT] = NOW
    t[I_WH_LEASE_TOKEN] = -1
    t[I_WH_LEASE_UNTIL] = -1
    t[I_WH_CLAIMS] = 0
    gone = gone or {}
    gone[#gone + 1] = 'wh_last_error'
  end
  count(N_IN_PROGRESS, -1)
  -- next_due: a pending delivery's next attempt (now), else the expiry.
  local due = delivering and NOW or t[I_EXPIRES_AT]
  if due ~= due_before then
    index(DUE, id, due)
  end
  if delivering and delivery_before ~= NOW then
    index(DELIVERIES, id, NOW)
    publish(DELIVER, id)
  end
  set[2] = pack_array(t)
  redis.call('HSET', key, unpack(set))
  if gone then
    redis.call('HDEL', key, unpack(gone))
  end
  -- Redis forgets a finished job itself, unless a delivery still needs it.
  if not delivering then
    local at = n2s(t[I_EXPIRES_AT] + EXPIRY_SLACK_MS)
    redis.call('PEXPIREAT', key, at)
    if t[I_HAS_SLOT] == 1 then
      local slot = redis.call('HGET', key, 'idempotency_slot')
      if slot then
        redis.call('PEXPIREAT', slot, at)
      end
    end
  end
  publish(CHANGED, id)
  return true
end

-- Forgets a job past its result TTL (MemoryStore::forget).
local function forget(j)
  local slot = slot_of(j)
  redis.call('DEL', j.key)
  if slot and redis.call('GET', slot) == j.id then
    redis.call('DEL', slot)
  end
  redis.call('ZREM', DUE, j.id)
  redis.call('ZREM', DELIVERIES, j.id)
  redis.call('PUBLISH', CHANGED, j.id)
end

-- The earliest due time, or nil.
local function first_due()
  local head = redis.call('ZRANGE', DUE, 0, 0, 'WITHSCORES')
  if head[2] then
    return tonumber(head[2])
  end
  return nil
end

-- Applies every due time up to NOW, at most `limit` of them; returns the next
-- due time (at or before NOW when the limit cut the batch short) or nil
-- (MemoryStore::sweep_now).
local function apply_due(limit)
  for _ = 1, limit do
    local head = redis.call('ZRANGE', DUE, 0, 0, 'WITHSCORES')
    if not head[1] then
      return nil
    end
    local id, at = head[1], tonumber(head[2])
    if at > NOW then
      return at
    end
    redis.call('ZREM', DUE, id)
    local j = load(job_key(id), id)
    if not j then
      -- Redis expired it already: waiters must still see it gone.
      redis.call('PUBLISH', CHANGED, id)
    elseif is_forgotten(j) then
      forget(j)
    else
      local b = snapshot(j)
      -- The entry was taken out of the index above.
      b.due = nil
      local changed = false
      if expire_if_due(j) or lapse_if_due(j) or lapse_delivery_if_due(j) then
        changed = true
      elseif j.retry_at and j.retry_at <= NOW then
        -- The backoff is over: runnable again. Not a change a client waits
        -- for, so the revision stays.
        put(j, 'retry_at', nil)
        changed = true
      end
      if changed then
        commit(j, b)
      end
      -- The entry was popped: put the job's due time back. One that is
      -- still now only after a change (a lease lapsing exactly at the queue
      -- deadline must then expire); without one it would loop.
      local due = next_due(j)
      if due and (changed or due > NOW) then
        redis.call('ZADD', DUE, n2s(due), id)
      end
    end
  end
  return first_due()
end

local function hgetall(key)
  return redis.call('HGETALL', key)
end

-- {tag, field1, value1, ...}
local function tagged(tag, key)
  local out = hgetall(key)
  table.insert(out, 1, tag)
  return out
end

-- Every function starts here: the keys and arguments every call takes
-- first.
-- The ready lists and channel names of each namespace (key prefix) the
-- library has served, made on its first call: every call of a namespace
-- passes the same keys, and making them again cost a submission a table
-- and three strings.
local NAMESPACES = {}

local function begin(keys, argv)
  PREFIX = argv[1]
  local ns = NAMESPACES[PREFIX]
  if not ns then
    ns = {ready = {keys[1], keys[2], keys[3]}, changed = PREFIX .. 'changed',
      work = PREFIX .. 'work', deliver = PREFIX .. 'deliver'}
    NAMESPACES[PREFIX] = ns
  end
  READY, CHANGED, WORK, DELIVER = ns.ready, ns.changed, ns.work, ns.deliver
  DUE, SEQ, N_RETRYING, N_IN_PROGRESS = keys[4], keys[5], keys[6], keys[7]
  DELIVERIES = keys[8]
  NOW = tonumber(argv[2])
  gathered = nil
end

-- ---- end of prelude ----
