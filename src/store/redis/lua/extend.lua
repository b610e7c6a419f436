-- extend: KEYS[9] the job; ARGV[3] id, ARGV[4] token, ARGV[5] lease (ms).
-- -> {'ok', lease_until} | {'stale'}
local j = load(KEYS[9], ARGV[3])
if not j or not holds_lease(j, ARGV[4]) then
  return {'stale'}
end
local b = snapshot(j)
put(j, 'lease_until', NOW + tonumber(ARGV[5]))
commit(j, b)
return {'ok', n2s(j.lease_until)}
