-- record_delivery: records one delivery attempt's result
-- (Job::record_delivery), if the deliverer's lease still holds it.
--
-- KEYS[1..8], ARGV[1..2]: what every function takes first (prelude.lua).
-- KEYS[9]  the job
-- ARGV[3]  its id
-- ARGV[4]  the delivery's lease token
-- ARGV[5]  the receiver's status code ('' if none)
-- ARGV[6]  '1' if the attempt failed with an error (else '0')
-- ARGV[7]  that error
-- ARGV[8]  '1' if delivered (else '0')
-- ARGV[9]  when to try again (ms; '' for never: the delivery failed)
--
-- Returns {'ok', field, value, ...} | {'stale'}.
--
-- 1. Check the lease.
-- 2. Record the attempt; the delivery succeeded, waits for a retry, or
--    failed.

-- 1. The lease.
local j = load(KEYS[9], ARGV[3])
if not j or not delivering(j) or j[I_WH_LEASE_TOKEN] < 0
    or j[I_WH_LEASE_TOKEN] ~= tonumber(ARGV[4]) then
  return {'stale'}
end
-- 2. The attempt.
local b = snapshot(j)
j[I_WH_ATTEMPTS] = math.max(j[I_WH_ATTEMPTS], 0) + 1
j[I_WH_LEASE_TOKEN] = NONE
j[I_WH_LEASE_UNTIL] = NONE
j[I_WH_LAST_STATUS_CODE] = tonumber(ARGV[5]) or NONE
if ARGV[6] == '1' then
  put(j, 'wh_last_error', ARGV[7])
else
  put(j, 'wh_last_error', nil)
end
local retry_at = tonumber(ARGV[9])
if ARGV[8] == '1' then
  j[I_WH_STATUS] = D_SUCCEEDED
  j[I_WH_NEXT_ATTEMPT_AT] = NONE
elseif retry_at then
  j[I_WH_STATUS] = D_PENDING
  j[I_WH_NEXT_ATTEMPT_AT] = retry_at
else
  j[I_WH_STATUS] = D_FAILED
  j[I_WH_NEXT_ATTEMPT_AT] = NONE
end
j[I_REVISION] = j[I_REVISION] + 1
commit(j, b)
return tagged('ok', KEYS[9])
