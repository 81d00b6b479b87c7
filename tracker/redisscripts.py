"""The Redis store's scripts besides the announce (``tracker.redisannounce``): the sweep,
manifests, reports and ``/stats``; each runs after ``tracker.redislua.COMMON``."""

from __future__ import annotations

from typing import Final

#: The sweep of one task (``Swarm.expire``): ARGV now. Returns {peers dropped, task gone 1/0}.
EXPIRE: Final = r"""
local now = tonumber(ARGV[1])
forget_departed(now)
if not load_task() then return {0, 1} end
local removed = 0
local silent = redis.call('ZRANGEBYSCORE', P .. 'seen', '-inf', '(' .. fmt(now - PEER_TIMEOUT))
for _, pid in ipairs(silent) do
  local raw = redis.call('HGET', P .. 'pr', pid)
  if raw then
    local r = cmsgpack.unpack(raw)
    depart(pid, r, now)
    remove_peer(pid, r, now)
    removed = removed + 1
  else
    redis.call('ZREM', P .. 'seen', pid)
  end
end
for _, pid in ipairs(redis.call('SMEMBERS', P .. 'rp')) do
  local raw = redis.call('HGET', P .. 'pr', pid)
  if raw then
    local r = cmsgpack.unpack(raw)
    place(pid, r, now)
    redis.call('HSET', P .. 'pr', pid, cmsgpack.pack(r))
    if not r[R_REPORTS] then redis.call('SREM', P .. 'rp', pid) end
  else
    redis.call('SREM', P .. 'rp', pid)
  end
end
expire_assignments(now)
if task.n == 0 and (not worth_keeping() or now - task.i > TASK_TTL) then
  delete_task()
  return {removed, 1}
end
save_task()
return {removed, 0}
"""

#: A manifest read: ARGV now, nonce hex or ''. Returns {'ok', fields..., digests, known} /
#: {'missing'} / {'replayed'}.
MANIFEST_GET: Final = r"""
local now = tonumber(ARGV[1])
if nonce_used(ARGV[2], now) then return {'replayed'} end
local f = redis.call('HMGET', T, 'url', 'len', 'pl', 'np', 'val', 'rng')
if not f[4] then return {'missing'} end
return {'ok', f[1], f[2], f[3], f[4], f[5] or '', f[5] and 1 or 0, f[6],
  redis.call('GET', P .. 'dg') or '', redis.call('GET', P .. 'kn') or ''}
"""

#: A manifest update (``Swarm.put_manifest``): ARGV now, nonce or '', may create a task (1/0),
#: a first manifest's problem ('' when it may be created), url, total length, piece length,
#: pieces, validator, has validator (1/0), ranges (1/0), its digests, its known bitmap, its
#: known count, then the update's own: total length or '', piece length or '', validator or
#: '', has validator, then index, digest pairs.
#: Returns like MANIFEST_GET, or {'conflict', why} / {'invalid', why} / {'full'} / {'replayed'}.
MANIFEST_PUT: Final = r"""
local now = tonumber(ARGV[1])
if nonce_used(ARGV[2], now) then return {'replayed'} end
load_task()
local function result()
  local f = redis.call('HMGET', T, 'url', 'len', 'pl', 'np', 'val', 'rng')
  return {'ok', f[1], f[2], f[3], f[4], f[5] or '', f[5] and 1 or 0, f[6],
    redis.call('GET', P .. 'dg') or '', redis.call('GET', P .. 'kn') or ''}
end
if task and task.np then
  local stored_val = redis.call('HGET', T, 'val')
  if ARGV[18] == '1' and stored_val and ARGV[17] ~= stored_val then
    return {'conflict', 'validator ' .. ARGV[17] .. ' differs from the stored ' .. stored_val ..
      ': the origin changed under the task'}
  end
  if ARGV[15] ~= '' and tonumber(ARGV[15]) ~= task.len then
    return {'conflict', 'total_length ' .. ARGV[15] .. ' differs from the stored ' .. task.len}
  end
  if ARGV[16] ~= '' and tonumber(ARGV[16]) ~= task.pl then
    return {'conflict', 'piece_length ' .. ARGV[16] .. ' differs from the stored ' .. task.pl}
  end
  local new = {}
  for j = 19, #ARGV, 2 do
    local i = tonumber(ARGV[j])
    if i >= task.np then
      return {'conflict',
        'piece ' .. i .. ' is out of range: the task has ' .. task.np .. ' pieces'}
    end
    if redis.call('GETBIT', P .. 'kn', i) == 1 then
      local stored = redis.call('GETRANGE', P .. 'dg', i * 32, i * 32 + 31)
      if stored ~= ARGV[j + 1] then return {'conflict', 'piece ' .. i, stored} end
    else
      new[#new + 1] = j
    end
  end
  for _, j in ipairs(new) do
    local i = tonumber(ARGV[j])
    redis.call('SETRANGE', P .. 'dg', i * 32, ARGV[j + 1])
    redis.call('SETBIT', P .. 'kn', i, 1)
  end
  if #new > 0 then redis.call('HINCRBY', T, 'kc', #new) end
  return result()
end
if ARGV[4] ~= '' then return {'invalid', ARGV[4]} end
if not task then
  if ARGV[3] ~= '1' then return {'full'} end
  new_task(now)
end
local np = tonumber(ARGV[8])
redis.call('HSET', T, 'url', ARGV[5], 'len', ARGV[6], 'pl', ARGV[7], 'np', np,
  'hb', math.floor((np + 7) / 8), 'rng', ARGV[11], 'kc', ARGV[14])
if ARGV[10] == '1' then redis.call('HSET', T, 'val', ARGV[9]) end
redis.call('SET', P .. 'dg', ARGV[12])
redis.call('SET', P .. 'kn', ARGV[13])
redis.call('DEL', P .. 'cnt', P .. 'av', P .. 'as')
for _, f in ipairs(redis.call('HKEYS', P .. 'ah')) do drop_assignment(f) end
if task.n == 0 then task.i = now end
task.xa = now - 2 * KEY_TTL
refresh(now)
save_task()
return result()
"""

#: A bad-peer report (``Swarm.report``): ARGV now, nonce or '', reporter, subject id or '',
#: subject address as compact bytes (ip then port) or ''. Returns {'ok', found 1/0} /
#: {'replayed'}.
REPORT: Final = r"""
local now = tonumber(ARGV[1])
if nonce_used(ARGV[2], now) then return {'replayed'} end
if not load_task() then return {'ok', 0} end
local reporter, subject, address = ARGV[3], ARGV[4], ARGV[5]
local r = nil
if subject ~= '' then
  local raw = redis.call('HGET', P .. 'pr', subject)
  if raw then r = cmsgpack.unpack(raw) end
end
if not r and address ~= '' then
  local all = redis.call('HGETALL', P .. 'pr')
  for j = 1, #all, 2 do
    local cand = cmsgpack.unpack(all[j + 1])
    if (#address == 6 and cand[R_C4] == address) or (#address == 18 and cand[R_C6] == address) then
      r = cand; subject = all[j]; break
    end
  end
end
if not r then return {'ok', 0} end
if reporter == subject then return {'ok', 1} end
local reps = r[R_REPORTS] or {}
local kept = {}
for j = 1, #reps, 2 do
  if reps[j] ~= reporter then kept[#kept + 1] = reps[j]; kept[#kept + 1] = reps[j + 1] end
end
kept[#kept + 1] = reporter; kept[#kept + 1] = now
while #kept / 2 > MAX_REPORTERS do table.remove(kept, 1); table.remove(kept, 1) end
r[R_REPORTS] = kept
redis.call('SADD', P .. 'rp', subject)
place(subject, r, now)
redis.call('HSET', P .. 'pr', subject, cmsgpack.pack(r))
return {'ok', 1}
"""

#: One task for ``/stats``: ARGV now, peers to list. Returns {} when the task is gone, else
#: {task fields..., available pieces, fetchers, peer rows...}; a row is {id, first, last, grew,
#: downloaded, uploaded, origin, left or -1, download bps, upload bps, have or '', has have,
#: progress, load or -1, zone, port, compact4, compact6, assigned, reporters within the ttl}.
STATS: Final = r"""
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local f = redis.call('HMGET', T, 'c', 'n', 's', 'd', 'ob', 'pb', 'db', 'ub', 'pg', 'url', 'len',
  'pl', 'np', 'kc', 'hb')
if not f[1] then return {} end
local out = {f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10] or '', f[11] or '',
  f[12] or '', f[13] or '', f[14] or '0', f[15] or '0',
  redis.call('BITCOUNT', P .. 'av'), redis.call('HLEN', P .. 'ah')}
local rows = {}
if limit > 0 then
  local ids = redis.call('ZREVRANGE', P .. 'pg', 0, limit - 1)
  for _, pid in ipairs(ids) do
    local raw = redis.call('HGET', P .. 'pr', pid)
    if raw then
      local r = cmsgpack.unpack(raw)
      local a = terms(pid)
      local reporters = 0
      if r[R_REPORTS] then
        for j = 2, #r[R_REPORTS], 2 do
          if r[R_REPORTS][j] > now - BAD_TTL then reporters = reporters + 1 end
        end
      end
      local left = r[R_LEFT]
      if left == false then left = -1 end
      local load = r[R_LOAD]
      if load == false then load = -1 end
      rows[#rows + 1] = {pid, fmt(r[R_FIRST]), fmt(r[R_LAST]), fmt(r[R_GREW]), fmt(r[R_DOWN]),
        fmt(r[R_UP]), fmt(r[R_ORIG]), fmt(left), fmt(r[R_DBPS]), fmt(r[R_UBPS]),
        r[R_HAVE] or '', r[R_HAVE] and 1 or 0, fmt(r[R_PROG]), load, r[R_ZONE], r[R_PORT],
        r[R_C4], r[R_C6], a and a[5] or 0, reporters}
    end
  end
end
out[#out + 1] = rows
return out
"""

#: A peer's assignment as it stands, for tests and ``/stats``: ARGV peer id. Returns pieces.
ASSIGNMENT: Final = r"""
local a = terms(ARGV[1])
if not a then return {} end
local pieces = bits_of(redis.call('GET', P .. 'a:' .. ARGV[1]) or '')
if a[2] then
  local rev = {}
  for k = #pieces, 1, -1 do rev[#rev + 1] = pieces[k] end
  return rev
end
return pieces
"""
