-- complete: KEYS[9..] the jobs (the results of several workers, sent
-- together); ARGV[3..] eleven arguments per job, in the same order: now (ms),
-- id, token, final status, send the job back ('1'/'0'), has response
-- ('1'/'0'), response status, headers, body, error code ('' for none), error
-- message.
-- -> per job, in order: {'ok', fields...} | 'ok' (not sent back) | 'stale'
local out = {}
gather()
for i = 1, #KEYS - 8 do
  local key, a = KEYS[8 + i], 2 + (i - 1) * 11
  -- Each result at the time its worker recorded it.
  NOW = tonumber(ARGV[a + 1])
  if not complete_packed(key, ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 6], ARGV[a + 7],
      ARGV[a + 8], ARGV[a + 9], ARGV[a + 10], ARGV[a + 11]) then
    out[i] = 'stale'
  elseif ARGV[a + 5] == '1' then
    out[i] = tagged('ok', key)
  else
    out[i] = 'ok'
  end
end
flush()
return out
