-- retry_later: puts a running job back in the queue, runnable at a given
-- time (Job::requeue), if the worker's lease still holds it.
--
-- KEYS[1..8], ARGV[1..2]: what every function takes first (prelude.lua).
-- KEYS[9]      the job
-- ARGV[3]      its id
-- ARGV[4]      the lease token
-- ARGV[5]      when it may run again (ms)
-- ARGV[6]      '1' to spend the attempt (else it is given back)
-- ARGV[7]      '1' if it has a response (else '0')
-- ARGV[8..10]  the response's status, headers and body
-- ARGV[11]     error code
-- ARGV[12]     error message
--
-- Returns {'ok', field, value, ...} | {'stale'}.
--
-- 1. Check the lease.
-- 2. Record the attempt's outcome and requeue the job, waiting for its
--    retry time if that is still ahead (in {ns}:unavailable when it waits
--    for the upstream to come back).

-- 1. The lease.
local j = load(KEYS[9], ARGV[3])
if not j or not holds_lease(j, ARGV[4]) then
  return {'stale'}
end
-- 2. The outcome, then back in the queue.
local b = snapshot(j)
if ARGV[6] ~= '1' then
  j[I_ATTEMPTS] = math.max(j[I_ATTEMPTS] - 1, 0)
end
put_outcome(j, ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12])
j[I_LEASE_TOKEN] = NONE
j[I_LEASE_UNTIL] = NONE
local at = tonumber(ARGV[5])
if at > NOW then
  j[I_RETRY_AT] = at
else
  j[I_RETRY_AT] = NONE
end
-- Waiting for the upstream to come back: wake_unavailable may end the wait.
if ARGV[11] == 'upstream_unavailable' then
  j[I_RETRY_UNAVAILABLE] = 1
else
  j[I_RETRY_UNAVAILABLE] = 0
end
touch(j, S_QUEUED)
commit(j, b)
return tagged('ok', KEYS[9])
