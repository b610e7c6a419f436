-- enqueue: makes the submissions of several callers at once, those that
-- arrived together (lines.rs, enqueue_line), in the order they arrived.
--
-- KEYS[1..8], ARGV[1..2]: what every function takes first (prelude.lua).
-- KEYS[9..]  per job in turn: the new job's key, then its idempotency
--            slot's key when it has one
-- ARGV[3..]  per job in turn:
--   max queued (the queue limit), id, priority (0..2), next due
--   (Job::next_due of the new job: the function need not read back what
--   it writes), '1' if it has a slot (else '0'), how many field, value
--   pairs follow, then those pairs as HSET takes them, passed on as they
--   are: 'request' and 'req_body' first (which an idempotent resubmission
--   is compared by), 'life' among the rest (its ready_at now, has_slot set
--   when it has a slot), and 'idempotency_slot' when it has one
--
-- Returns, per job in order: {'created'} | {'existing', field, value, ...}
-- (the job already holding its idempotency key) | {'conflict', id} (that
-- key holds a different request) | {'full'} (the queue is at its limit).
--
-- 1. For each job: if its idempotency slot holds a live job, answer that
--    job (or a conflict).
-- 2. Else, if the queue has room, write the job and take its slot.
-- 3. Put the jobs made in the ready lists and the due index, and tell the
--    work channel, once for all of them.
--
-- Jobs are taken in order, so a job whose key an earlier one of the same
-- call took is that job's resubmission.

local out = {}
local queued = nil
-- The jobs made: the first in locals, the rest side by side with it in
-- tables (ids, ready-list levels, due times), made for a second job only:
-- most calls make one.
local made = 0
local id1, level1, due1
local ids, levels, dues
local k, a = 9, 3
while a <= #ARGV do
  local key = KEYS[k]
  local max, id, priority, due, fields = tonumber(ARGV[a]), ARGV[a + 1], ARGV[a + 2], ARGV[a + 3],
    tonumber(ARGV[a + 5])
  local slot = nil
  if ARGV[a + 4] == '1' then
    slot = KEYS[k + 1]
    k = k + 2
  else
    k = k + 1
  end
  local first, last = a + 6, a + 5 + 2 * fields
  a = last + 1
  -- 1. An idempotent resubmission is answered with the job it repeats.
  local answer = nil
  if slot then
    local existing = redis.call('GET', slot)
    if existing then
      local ekey = job_key(existing)
      local ej = load(ekey, existing)
      if ej and not is_forgotten(ej) then
        local e = redis.call('HMGET', ekey, 'request', 'req_body')
        if not e[1] or request_head(e[1]) ~= request_head(ARGV[first + 1]) or e[2] ~= ARGV[first + 3] then
          answer = {'conflict', existing}
        else
          answer = tagged('existing', ekey)
        end
      end
    end
  end
  -- 2. A new job, if the queue has room.
  if not answer then
    if not queued then
      queued = redis.call('ZCARD', READY[1]) + redis.call('ZCARD', READY[2])
        + redis.call('ZCARD', READY[3]) + tonumber(redis.call('GET', N_RETRYING) or '0')
    end
    if queued >= max then
      answer = FULL
    else
      queued = queued + 1
      if slot then
        redis.call('SET', slot, id)
      end
      redis.call('HSET', key, unpack(ARGV, first, last))
      made = made + 1
      if made == 1 then
        id1, level1, due1 = id, tonumber(priority) + 1, due
      else
        if made == 2 then
          ids, levels, dues = {id1}, {level1}, {due1}
        end
        ids[made], levels[made], dues[made] = id, tonumber(priority) + 1, due
      end
      answer = CREATED
    end
  end
  out[#out + 1] = answer
end
-- 3. The indexes and the work channel, once for the jobs made.
if made == 1 then
  redis.call('ZADD', READY[level1], n2s(redis.call('INCR', SEQ)), id1)
  redis.call('ZADD', DUE, due1, id1)
  redis.call('PUBLISH', WORK, id1)
elseif made > 1 then
  -- In the ready lists in the order they were taken, as one INCR each would
  -- have put them.
  local seq = redis.call('INCRBY', SEQ, n2s(made)) - made
  local ready, due = {}, {}
  for i = 1, made do
    local add = ready[levels[i]]
    if not add then
      add = {}
      ready[levels[i]] = add
    end
    add[#add + 1] = n2s(seq + i)
    add[#add + 1] = ids[i]
    due[#due + 1] = dues[i]
    due[#due + 1] = ids[i]
  end
  for level, add in pairs(ready) do
    redis.call('ZADD', READY[level], unpack(add))
  end
  redis.call('ZADD', DUE, unpack(due))
  redis.call('PUBLISH', WORK, table.concat(ids, ' '))
end
return out
