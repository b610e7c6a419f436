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
if not j or not delivering(j) or j.wh_lease_token == nil
    or j.wh_lease_token ~= tonumber(ARGV[4]) then
  return {'stale'}
end
-- 2. The attempt.
local b = snapshot(j)
put(j, 'wh_attempts', (j.wh_attempts or 0) + 1)
put(j, 'wh_lease_token', nil)
put(j, 'wh_lease_until', nil)
if ARGV[5] ~= '' then
  put(j, 'wh_last_status_code', tonumber(ARGV[5]))
else
  put(j, 'wh_last_status_code', nil)
end
if ARGV[6] == '1' then
  put(j, 'wh_last_error', ARGV[7])
else
  put(j, 'wh_last_error', nil)
end
local retry_at = tonumber(ARGV[9])
if ARGV[8] == '1' then
  put(j, 'wh_status', 'succeeded')
  put(j, 'wh_next_attempt_at', nil)
elseif retry_at then
  put(j, 'wh_status', 'pending')
  put(j, 'wh_next_attempt_at', retry_at)
else
  put(j, 'wh_status', 'failed')
  put(j, 'wh_next_attempt_at', nil)
end
put(j, 'revision', j.revision + 1)
commit(j, b)
return tagged('ok', KEYS[9])
