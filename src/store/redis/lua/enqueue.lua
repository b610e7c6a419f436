-- enqueue: KEYS[9] the new job, KEYS[10] its idempotency slot (if any).
-- ARGV[3] max queued, ARGV[4] id, ARGV[5] priority, ARGV[6] next due
-- (Job::next_due of the new job: the function need not read back what it
-- writes), ARGV[7..] the new job's fields and values as HSET takes them,
-- passed on as they are: 'request' and 'req_body' first (ARGV[8] and
-- ARGV[10], which an idempotent resubmission is compared by), 'life' among
-- the rest (its ready_at now, has_slot set when KEYS[10] is given), and
-- 'idempotency_slot' with KEYS[10] when it is given.
-- -> {'created'} | {'existing', fields...} | {'conflict', id} | {'full'}
local key, slot = KEYS[9], KEYS[10]
local id = ARGV[4]
if slot then
  local existing = redis.call('GET', slot)
  if existing then
    local ekey = job_key(existing)
    local ej = load(ekey, existing)
    if ej and not is_forgotten(ej) then
      local e = redis.call('HMGET', ekey, 'request', 'req_body')
      if not e[1] or request_head(e[1]) ~= request_head(ARGV[8]) or e[2] ~= ARGV[10] then
        return {'conflict', existing}
      end
      return tagged('existing', ekey)
    end
  end
end
local queued = redis.call('ZCARD', READY[1]) + redis.call('ZCARD', READY[2])
  + redis.call('ZCARD', READY[3]) + tonumber(redis.call('GET', N_RETRYING) or '0')
if queued >= tonumber(ARGV[3]) then
  return {'full'}
end
if slot then
  redis.call('SET', slot, id)
end
redis.call('HSET', key, unpack(ARGV, 7))
redis.call('ZADD', READY[tonumber(ARGV[5]) + 1], n2s(redis.call('INCR', SEQ)), id)
redis.call('ZADD', DUE, ARGV[6], id)
redis.call('PUBLISH', WORK, id)
return {'created'}
