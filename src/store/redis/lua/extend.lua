-- extend: renews a running job's lease (Job::extend), if the worker's lease
-- still holds it. The revision stays: waiters are not woken by a heartbeat.
--
-- KEYS[1..8], ARGV[1..2]: what every function takes first (prelude.lua).
-- KEYS[9]  the job
-- ARGV[3]  its id
-- ARGV[4]  the lease token
-- ARGV[5]  the lease (ms, from now)
--
-- Returns {'ok', lease end (ms)} | {'stale'}.

local j = load(KEYS[9], ARGV[3])
if not j or not holds_lease(j, ARGV[4]) then
  return {'stale'}
end
local b = snapshot(j)
j[I_LEASE_UNTIL] = NOW + tonumber(ARGV[5])
commit(j, b)
return {'ok', n2s(j[I_LEASE_UNTIL])}
