-- bookkeeping: what the store keeps beside each job, as
-- `MemoryStore::transition` (src/store/memory.rs) keeps it: the counters,
-- the ready lists, the due index, the deliveries, the key's expiry and the
-- messages. commit() writes a changed job and all of these; apply_due()
-- applies what came due (the sweep, and the first step of every claim).
-- Shared code (see prelude.lua): no KEYS or ARGV of its own; it only
-- defines functions.
--
-- Gathering: each call from Lua costs Redis more than the command itself,
-- so a script that changes many jobs (claim, complete) gathers the
-- bookkeeping here and writes each key once at the end (flush); the others
-- write at once. Nothing in between reads them: a gathering script pages
-- the ready lists by offset (see claim.lua). Each part of what is gathered
-- is made when first needed: a call that claims or completes one job would
-- otherwise make a dozen tables it never fills.

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

-- Adds the jobs this call expired to {ns}:n:expired, and those it failed
-- as abandoned to {ns}:n:abandoned, for the next sweep to report: at most
-- one command a key a call, however many jobs it ended.
local function count_ended()
  if expired_here > 0 then
    redis.call('INCRBY', N_EXPIRED, n2s(expired_here))
    expired_here = 0
  end
  if abandoned_here > 0 then
    redis.call('INCRBY', N_ABANDONED, n2s(abandoned_here))
    abandoned_here = 0
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
  count_ended()
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
    elseif status == S_EXPIRED and b.status ~= S_EXPIRED then
      -- No process ends an expired job: the next sweep reports it. Counted
      -- here and written once a call (count_ended), or not at all when
      -- the call is the sweep.
      expired_here = expired_here + 1
    end
  end
  -- The flag describes a backoff: with none, there is nothing to wake.
  if not retrying then
    j[I_RETRY_UNAVAILABLE] = 0
  end
  local waits = waits_for_upstream(j)
  if waits ~= b.waits then
    if waits then
      redis.call('ZADD', UNAVAILABLE, n2s(j[I_CREATED_AT]), id)
    else
      redis.call('ZREM', UNAVAILABLE, id)
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
      if expire_if_due(j) then
        changed = true
      elseif lapse_if_due(j) then
        changed = true
        if j[I_STATUS] == S_FAILED then
          -- Abandoned: no process ends it, so the next sweep reports it.
          -- Counted here and written once a call (count_ended), or not at
          -- all when the call is the sweep.
          abandoned_here = abandoned_here + 1
        end
      elseif lapse_delivery_if_due(j) then
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
