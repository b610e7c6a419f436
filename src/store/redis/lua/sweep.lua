-- sweep: applies what came due (Store::sweep): deadlines expire queued
-- jobs, lapsed leases requeue or fail theirs, retries become runnable,
-- jobs past their TTL are forgotten.
--
-- KEYS[1..8], ARGV[1..2]: what every function takes first (prelude.lua).
-- ARGV[3]  how many due items to apply, at most
--
-- Returns {next due (ms) or '', jobs expired, jobs abandoned}: the due time
-- is at or before now when the limit cut the sweep short; the counts are of
-- the jobs expired, and of those failed as abandoned (a lease lapsed for
-- the last allowed time), since the last sweep of this shard (by this one,
-- or by the claims before it), which this sweep takes.

-- 1. Apply what came due.
local due = apply_due(tonumber(ARGV[3]))
-- 2. Take the counts of the jobs expired and abandoned since the last
-- sweep, and add those this one ended (never written: reported at once).
local expired = tonumber(redis.call('GETDEL', N_EXPIRED) or '0') + expired_here
local abandoned = tonumber(redis.call('GETDEL', N_ABANDONED) or '0') + abandoned_here
expired_here, abandoned_here = 0, 0
return {due and n2s(due) or '', n2s(expired), n2s(abandoned)}
