-- enqueue: KEYS[9] the new job, KEYS[10] its idempotency slot (if any).
-- ARGV[3] max queued, ARGV[4] id, ARGV[5] method, ARGV[6] path, ARGV[7] body,
-- ARGV[8] priority, ARGV[9] next due (Job::next_due of the new job: the
-- script need not read back what it writes), ARGV[10..] field, value pairs
-- of the new job ('life' among them, its ready_at now and has_slot set
-- when KEYS[10] is given).
-- -> {'created'} | {'existing', fields...} | {'conflict', id} | {'full'}
local key, slot = KEYS[9], KEYS[10]
local id = ARGV[4]
if slot then
  local existing = redis.call('GET', slot)
  if existing then
    local ekey = job_key(existing)
    local ej = load(ekey, existing)
    if ej and not is_forgotten(ej) then
      local e = redis.call('HMGET', ekey, 'method', 'path', 'req_body')
      if e[1] ~= ARGV[5] or e[2] ~= ARGV[6] or e[3] ~= ARGV[7] then
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
local fields = {'method', ARGV[5], 'path', ARGV[6], 'req_body', ARGV[7]}
for i = 10, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
if slot then
  fields[#fields + 1] = 'idempotency_slot'
  fields[#fields + 1] = slot
  redis.call('SET', slot, id)
end
redis.call('HSET', key, unpack(fields))
redis.call('ZADD', READY[tonumber(ARGV[8]) + 1], n2s(redis.call('INCR', SEQ)), id)
redis.call('ZADD', DUE, ARGV[9], id)
redis.call('PUBLISH', WORK, id)
return {'created'}
