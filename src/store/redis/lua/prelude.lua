-- prelude: what every function of tower-defer's Redis library starts from:
-- the keys, time and channels of the call being run, which begin() sets,
-- and the form a job takes in a script. functions.rs joins the shared code
-- (lua/life.lua, this file, job.lua, bookkeeping.lua, claiming.lua) and
-- then the functions into one library; Redis runs the shared code once,
-- when it loads the library, and each function starts with begin(KEYS,
-- ARGV).
--
-- The shared code mirrors the pure transitions of `Job` (src/job.rs, in
-- job.lua) and the bookkeeping of `MemoryStore::transition`
-- (src/store/memory.rs, in bookkeeping.lua): keep the three in step. The
-- store conformance tests and the model test (tests/store_model) hold it to
-- the memory store. Each rule is written once there, and every function
-- goes through it: claim.lua and complete.lua claim with claim_job
-- (through claiming.lua), complete.lua ends a job with end_job as the
-- sweep and a cancel do, and all of them write a changed job through
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
-- Three more keys of the namespace every function may write, built from the
-- prefix (as a job's key is) rather than passed, so that the functions'
-- KEYS stay as they were:
--   {ns}:unavailable  queued jobs waiting out a backoff because the upstream
--                     was unavailable (score = created_at), for wake_unavailable
--   {ns}:n:expired    jobs expired since a sweep last took the count (sweep.lua)
--   {ns}:n:abandoned  jobs failed as abandoned (a lease lapsed for the last
--                     allowed time, in apply_due) since a sweep last took the
--                     count (sweep.lua)
-- A function that may end a job so (through apply_due or expire_if_due)
-- ends with flush() or count_ended(), which write both counts.
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
local READY, DUE, SEQ, N_RETRYING, N_IN_PROGRESS, DELIVERIES, UNAVAILABLE, N_EXPIRED
local N_ABANDONED
local PREFIX, NOW, CHANGED, WORK, DELIVER
-- The bookkeeping a batching function gathers (bookkeeping.lua; begin
-- clears it).
local gathered = nil
-- The jobs this call expired, and those it failed as abandoned, not yet
-- added to {ns}:n:expired and {ns}:n:abandoned (bookkeeping.lua: commit
-- counts expiries, apply_due abandonments, flush or count_ended writes
-- them, sweep.lua takes them; begin clears them).
local expired_here, abandoned_here = 0, 0
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
      work = PREFIX .. 'work', deliver = PREFIX .. 'deliver',
      unavailable = PREFIX .. 'unavailable', expired = PREFIX .. 'n:expired',
      abandoned = PREFIX .. 'n:abandoned'}
    NAMESPACES[PREFIX] = ns
  end
  READY, CHANGED, WORK, DELIVER = ns.ready, ns.changed, ns.work, ns.deliver
  UNAVAILABLE, N_EXPIRED, N_ABANDONED = ns.unavailable, ns.expired, ns.abandoned
  DUE, SEQ, N_RETRYING, N_IN_PROGRESS = keys[4], keys[5], keys[6], keys[7]
  DELIVERIES = keys[8]
  NOW = tonumber(argv[2])
  gathered = nil
  expired_here, abandoned_here = 0, 0
end
