-- record_delivery: KEYS[9] the job; ARGV[3] id, ARGV[4] token, ARGV[5] the
-- receiver's status code ('' if none), ARGV[6] has error ('1'/'0'), ARGV[7]
-- error, ARGV[8] delivered ('1'/'0'), ARGV[9] retry at (ms, '' for none).
-- (Job::record_delivery) -> {'ok', fields...} | {'stale'}
local j = load(KEYS[9], ARGV[3])
if not j or not delivering(j) or j.wh_lease_token == nil
    or j.wh_lease_token ~= tonumber(ARGV[4]) then
  return {'stale'}
end
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
