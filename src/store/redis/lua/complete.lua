-- complete: records the results of several workers at once, the
-- completions that arrived together (lines.rs, complete_line); each ends
-- its job (Job::finish) if its lease still holds it. Then it claims the
-- next job for each worker that asked for one (Store::complete_and_claim),
-- as claim.lua would in a call of its own.
--
-- KEYS[1..8], ARGV[1..2]: what every function takes first (prelude.lua).
-- KEYS[9..]  the jobs, one key each
-- ARGV[3]    the lease of the jobs claimed after (ms; '' when none is)
-- ARGV[4]    the priority aging period (ms; '' for none)
-- ARGV[5]    how many due items to apply before claiming, at most
-- ARGV[6]    how many jobs to claim after, at most ('0': none)
-- ARGV[7..]  twelve per job, in the order of the keys:
--   now (ms, when its worker recorded it), id, lease token, final status,
--   send the job back ('1'/'0'), has a response ('1'/'0'), response
--   status, headers and body, error code ('' for none), error message,
--   the size of the batch that ran it ('' when it ran alone)
--
-- Returns, per job in order: {'ok', field, value, ...} (sent back) | 'ok'
-- (not sent back) | 'stale' (the lease no longer holds the job); when it
-- claims, then the next due time and the jobs claimed, as claim.lua
-- answers them.
--
-- 1. For each job, at its own "now": check its lease, record the outcome
--    and end it with the status it names.
-- 2. Write the bookkeeping gathered on the way, once (flush).
-- 3. Claim, at the call's "now", whatever the completions' answers.

local out = {}
local jobs = #KEYS - 8
gather()
-- 1. Each job in turn.
for i = 1, jobs do
  local key, a = KEYS[8 + i], 6 + (i - 1) * 12
  -- Each result at the time its worker recorded it.
  NOW = tonumber(ARGV[a + 1])
  local j = load(key, ARGV[a + 2])
  if not j or not holds_lease(j, ARGV[a + 3]) then
    out[i] = 'stale'
  else
    -- Job::finish: the outcome, then the end it names.
    local b = snapshot(j)
    put_outcome(j, ARGV[a + 6], ARGV[a + 7], ARGV[a + 8], ARGV[a + 9], ARGV[a + 10], ARGV[a + 11])
    -- Job::finish: the size of the batch it ran in. A job ends once, so
    -- there is never an earlier one to delete.
    if ARGV[a + 12] ~= '' then
      put(j, 'batch_size', ARGV[a + 12])
    end
    end_job(j, STATUS_CODE[ARGV[a + 4]])
    commit(j, b)
    if ARGV[a + 5] == '1' then
      out[i] = tagged('ok', key)
    else
      out[i] = 'ok'
    end
  end
end
-- 2. The bookkeeping, once.
flush()
-- 3. The next jobs, at the call's time.
local want = tonumber(ARGV[6])
if want > 0 then
  NOW = tonumber(ARGV[2])
  out[jobs + 1] = ''
  out[jobs + 1] = claim_ready(tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), want, out)
end
return out
