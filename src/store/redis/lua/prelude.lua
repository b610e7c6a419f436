-- prelude: what every function of tower-defer's Redis library shares (see
-- functions.rs; only the generated lua/life.lua comes before it). Redis
-- runs it once, when the library is loaded; each function then starts with
-- begin(KEYS, ARGV). It mirrors the pure transitions of `Job` (src/job.rs)
-- and the bookkeeping of `MemoryStore::transition` (src/store/memory.rs):
-- keep the three in step. The store conformance tests and the model test
-- (tests/store_model) hold it to the memory store.
--
-- Each rule is written once, here, and every function goes through it:
-- claim.lua claims with claim_job, complete.lua ends a job with end_job as
-- the sweep and a cancel do, and all of them write a changed job through
-- snapshot() and commit(), whether they change one job or a batch of them.
--
-- KEYS and ARGV every function takes first (keys.rs passes them):
--   KEYS[1..3]  {ns}:ready:0|1|2  runnable jobs per priority (score = global sequence)
--   KEYS[4]     {ns}:due          each job's Job::next_due() in ms
--   KEYS[5]     {ns}:seq          the sequence behind the ready scores
--   KEYS[6]     {ns}:n:retrying   queued jobs waiting out a backoff
--   KEYS[7]     {ns}:n:in_progress
--   KEYS[8]     {ns}:deliveries   webhook deliveries nobody holds, by Job::delivery_ready_at()
--   ARGV[1]     the key prefix "{ns}:"
--   ARGV[2]     now (ms, the caller's clock)
-- A function's own KEYS and ARGV follow them, from KEYS[9] and ARGV[3].
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

-- ---- A job ----
-- A job's lifecycle scalars live in one field of its hash, 'life': one
-- little-endian double each, -1 for none (lua/life.lua, written from the
-- list in life.rs). Every value is a count, a flag or a time in ms, whole
-- and below 2^53, so a double holds it exactly. One HGET and one
-- struct.unpack read them all, which costs far less than a field and a
-- conversion per scalar. The strings a transition writes (error code and
-- message, the last webhook error) stay fields of their own; a flag in
-- 'life' says whether each string field a script needs is there.
--
-- In a script a job is the array struct.unpack gives: j[I_<NAME>] is a
-- scalar (NONE for none; a status is its code, S_<STATUS> or D_<STATUS>),
-- j.key and j.id name it, and j.set and j.del hold the changes to its
-- other fields that commit() writes. Working on the array as it comes
-- spares a table of names per job, and a call per scalar changed.
local NONE = -1

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
-- answer's table). Redis asks each table of an answer for its special
-- fields before converting it, so claim and complete answer a bare string
-- where they can.
local CREATED, FULL = {'created'}, {'full'}

local function job_key(id)
  return PREFIX .. 'job:' .. id
end

-- A scalar's value, or nil for none.
local function opt(v)
  if v < 0 then
    return nil
  end
  return v
end

-- The job at `key` whose 'life' field is `life`. One constructor sizes the
-- table once (struct.unpack's last value, the position after the field,
-- lands after the scalars and is never read).
local function life_of(key, id, life)
  return {key = key, id = id, struct.unpack(LIFE_FORMAT, life)}
end

-- The job at `key`, or nil if there is no such job.
local function load(key, id)
  local life = redis.call('HGET', key, 'life')
  if not life then
    return nil
  end
  return life_of(key, id, life)
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
  if j[I_HAS_SLOT] == 1 then
    return redis.call('HGET', j.key, 'idempotency_slot')
  end
  return nil
end

-- Records a change to a field of its own (not a scalar) for commit(): set
-- to `v`, or deleted when `v` is nil. j.set holds the fields to set as
-- HSET takes them (field, value, ...; a later pair of the same field wins),
-- j.del the fields to delete (which commit() deletes after setting); each
-- is made when first needed, as most transitions change only scalars.
local function put(j, f, v)
  local del = j.del
  if v == nil then
    if not del then
      del = {}
      j.del = del
    end
    del[f] = true
    return
  end
  local set = j.set
  if set then
    set[#set + 1] = f
    set[#set + 1] = v
  else
    j.set = {f, v}
  end
  if del then
    del[f] = nil
  end
end

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

-- Job::lapse_if_due
local function lapse_if_due(j)
  if not (j[I_LEASE_TOKEN] >= 0 and j[I_STATUS] == S_IN_PROGRESS and j[I_LEASE_UNTIL] <= NOW) then
    return false
  end
  set_error(j, 'lease_expired', 'the worker running it stopped renewing its lease')
  if j[I_ATTEMPTS] >= j[I_MAX_ATTEMPTS] then
    end_job(j, S_FAILED)
  else
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

-- ---- The bookkeeping (MemoryStore::transition) ----
-- The counters, the ready lists, the due index, the deliveries and the
-- messages of the jobs one script changes. Each call from Lua costs Redis
-- more than the command itself, so a script that changes many jobs (claim,
-- complete) gathers them here and writes each key once at the end (flush);
-- the others write at once. Nothing in between reads them: a gathering
-- script pages the ready lists by offset (see claim.lua). Each part of it
-- is made when first needed: a call that claims or completes one job would
-- otherwise make a dozen tables it never fills.
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

-- Writes a changed job back and keeps the counters, the ready lists and the
-- due index in step with it; publishes the change (MemoryStore::transition).
-- `b` is snapshot(j) from before the change. Returns the new 'life'.
local function commit(j, b)
  local id, status = j.id, j[I_STATUS]
  local retrying = j[I_RETRY_AT] >= 0
  if b.status ~= status or b.retrying ~= retrying then
    if b.status == S_QUEUED and b.retrying then
      count(N_RETRYING, -1)
    elseif b.status == S_IN_PROGRESS then
      count(N_IN_PROGRESS, -1)
    end
    if status == S_QUEUED and retrying then
      count(N_RETRYING, 1)
    elseif status == S_IN_PROGRESS then
      count(N_IN_PROGRESS, 1)
    end
  end
  local due, ready, delivery, kept = placement(j)
  if due ~= b.due then
    index(DUE, id, due or false)
  end
  if delivery ~= b.delivery then
    index(DELIVERIES, id, delivery or false)
    if delivery then
      publish(DELIVER, id)
    end
  end
  if b.ready and not ready then
    set_ready(j[I_PRIORITY] + 1, id, false)
  elseif ready and not b.ready then
    set_ready(j[I_PRIORITY] + 1, id, true)
    j[I_READY_AT] = NOW
    publish(WORK, id)
  elseif retrying and not b.retrying then
    -- Waiting for a retry: idle workers must learn when it comes due.
    publish(WORK, id)
  end
  local life = struct.pack(LIFE_FORMAT, unpack(j, 1, N_LIFE))
  if j.set then
    redis.call('HSET', j.key, 'life', life, unpack(j.set))
  else
    redis.call('HSET', j.key, 'life', life)
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
  if b.kept and not kept then
    local at = n2s(j[I_EXPIRES_AT] + EXPIRY_SLACK_MS)
    redis.call('PEXPIREAT', j.key, at)
    local slot = slot_of(j)
    if slot then
      redis.call('PEXPIREAT', slot, at)
    end
  end
  if j[I_REVISION] ~= b.revision then
    publish(CHANGED, id)
  end
  return life
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
      elseif j[I_RETRY_AT] >= 0 and j[I_RETRY_AT] <= NOW then
        -- The backoff is over: runnable again. Not a change a client waits
        -- for, so the revision stays.
        j[I_RETRY_AT] = NONE
        changed = true
      end
      if changed then
        commit(j, b)
      end
      -- The entry was popped: put the job's due time back. One that is
      -- still now only after a change (a lease lapsing exactly at the queue
      -- deadline must then expire); without one it would loop.
      local due = placement(j)
      if due and (changed or due > NOW) then
        redis.call('ZADD', DUE, n2s(due), id)
      end
    end
  end
  return first_due()
end

-- {tag, field1, value1, ...}: a job's fields as they are now, after a tag.
local function tagged(tag, key)
  local out = redis.call('HGETALL', key)
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
