-- claim_delivery: ARGV[3] lease (ms), ARGV[4] how many due items to apply first.
-- -> {'claimed', fields...} | {'none', next delivery time or ''}
local lease_ms = tonumber(ARGV[3])
apply_due(tonumber(ARGV[4]))
for _ = 1, 1000 do
  local head = redis.call('ZRANGE', DELIVERIES, 0, 0, 'WITHSCORES')
  if not head[1] or tonumber(head[2]) > NOW then
    break
  end
  local id = head[1]
  local key = job_key(id)
  local j = load(key, id)
  if j then
    local b = snapshot(j)
    if claim_delivery(j, lease_ms) then
      commit(j, b)
      return tagged('claimed', key)
    end
  end
  -- Not claimable after all (a stale entry): drop it.
  redis.call('ZREM', DELIVERIES, id)
end
local head = redis.call('ZRANGE', DELIVERIES, 0, 0, 'WITHSCORES')
if head[2] then
  return {'none', head[2]}
end
return {'none', ''}
