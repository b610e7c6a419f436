-- claim_delivery: hands a deliverer the webhook delivery that is due first
-- (Job::claim_delivery), with a lease.
--
-- KEYS[1..8], ARGV[1..2]: what every function takes first (prelude.lua).
-- ARGV[3]  the lease (ms)
-- ARGV[4]  how many due items to apply first, at most
--
-- Returns {'claimed', field, value, ...} | {'none', next delivery time
-- (ms) or ''}.
--
-- 1. Apply what came due (a lapsed delivery lease makes its delivery due;
--    the jobs it expired or failed as abandoned are counted for the next
--    sweep).
-- 2. Claim the first due delivery, dropping stale entries on the way.
-- 3. With none due, answer when the next one is.

local lease_ms = tonumber(ARGV[3])
-- 1. What came due (the jobs it ended counted for the next sweep).
apply_due(tonumber(ARGV[4]))
count_ended()
-- 2. The first due delivery.
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
-- 3. None due: when the next one is.
local head = redis.call('ZRANGE', DELIVERIES, 0, 0, 'WITHSCORES')
if head[2] then
  return {'none', head[2]}
end
return {'none', ''}
