"""The Lua scripts of the Redis store: every decision that must be taken once for the whole
cluster runs inside Redis, atomically, in one script call per request.

All keys of a task share the hash tag ``{<task hex>}`` (one Redis Cluster slot); a script gets
the task's hash ``df:{<hex>}:t`` as its only key and derives the others from it. The layout::

    t        HASH   the task: counts (n peers, s seeds, d completions), byte totals, rate sums,
                    the manifest's geometry (url, len, pl, np, hb, val, rng, kc known digests)
    dg, kn   STRING the digests (32 bytes per piece) and which are known (BEP 3 bit order)
    pr       HASH   peer id -> its record (cmsgpack array, the ``R_*`` positions)
    seen     ZSET   peer id -> last announce (the sweep drops the silent)
    pg       ZSET   peer id -> progress (``/stats`` lists the best first)
    rk       ZSET   ranked peers: member id..compact4..compact6, score the tier (``selection``)
    rz:<z>   ZSET   the same, per zone; zs SET the zones in use; tc HASH tier -> members
    cnt, av  STRING holders per piece (BITFIELD u16) and the pieces some live peer holds
    as       STRING every assigned piece; a:<peer> STRING one fetcher's; ah HASH its terms
    rp       SET    peers holding bad-peer reports
    dep      ZSET   departed peer -> when; deps HASH departed peer -> its last df_seq
    n:<hex>  STRING an API nonce used once (expires after the skew window)

Every key expires ``KEY_TTL`` after the task's last change (refreshed at most every few
minutes), so a forgotten task leaves no memory behind; the sweep deletes tasks earlier by the
tracker's own rules (``task_ttl``). The Python side (``tracker.redisstore``) renders the
constants into ``COMMON`` with ``str.format`` (hence the doubled braces).
"""

from __future__ import annotations

from typing import Final

COMMON: Final = r"""
local SKEW = {skew}
local PEER_TIMEOUT = {peer_timeout}
local MAX_PEERS = {max_peers}
local EXCLUDE = {exclude}
local BAD_TTL = {bad_ttl}
local MAX_REPORTERS = {max_reporters}
local BUDGET = {budget}
local ASSIGN_MAX = {assign_max}
local ASSIGN_TTL = {assign_ttl}
local TASK_TTL = {task_ttl}
local KEY_TTL = {key_ttl}
local INTERVAL = {interval}
local T = KEYS[1]
local P = string.sub(T, 1, #T - 1)
local R_SEQ, R_FIRST, R_LAST, R_GREW, R_DOWN, R_UP, R_ORIG, R_LEFT = 1, 2, 3, 4, 5, 6, 7, 8
local R_COUNTED, R_DBPS, R_UBPS, R_HAVE = 9, 10, 11, 12
local R_HC, R_PROG, R_LOAD, R_ZONE = 13, 14, 15, 16
local R_SOURCE, R_PORT, R_C4, R_C6 = 17, 18, 19, 20
local R_RKEY, R_RZONE, R_RMEM, R_REPORTS = 21, 22, 23, 24

local function fmt(x) return string.format('%.17g', x) end
local function num(v, default) if v then return tonumber(v) end return default end

local function seq_le(a, b)
  if #a ~= #b then return #a < #b end
  return a <= b
end

-- task state read once per call, written back by save_task
local task = nil
local function load_task()
  local f = redis.call('HMGET', T, 'n', 's', 'd', 'np', 'hb', 'len', 'pl', 'kc', 'rng', 'db',
    'ub', 'pg', 'i', 'xa', 'ob', 'pb', 'c')
  if not f[1] then return nil end
  task = {{n = tonumber(f[1]), s = tonumber(f[2]), d = tonumber(f[3]), np = num(f[4], false),
    hb = num(f[5], 0), len = num(f[6], 0), pl = num(f[7], 0), kc = num(f[8], 0),
    rng = f[9] ~= '0', db = tonumber(f[10]), ub = tonumber(f[11]), pg = tonumber(f[12]),
    i = tonumber(f[13]), xa = num(f[14], 0), ob = tonumber(f[15]), pb = tonumber(f[16]),
    c = tonumber(f[17])}}
  return task
end

local function new_task(now)
  -- xa far in the past: this call's refresh gives every key it creates a TTL
  redis.call('HSET', T, 'c', fmt(now), 'i', fmt(now), 'n', 0, 's', 0, 'd', 0, 'db', 0, 'ub', 0,
    'pg', 0, 'ob', 0, 'pb', 0, 'xa', fmt(now - 2 * KEY_TTL))
  redis.call('EXPIRE', T, KEY_TTL)
  return load_task()
end

local KEYS_OF_TASK = {{'t', 'dg', 'kn', 'pr', 'seen', 'pg', 'rk', 'zs', 'tc', 'cnt', 'av', 'as',
  'ah', 'rp', 'tmp', 'tmp2'}}

local function refresh(now)
  if now - task.xa < KEY_TTL / 8 and now >= task.xa then return end
  for _, k in ipairs(KEYS_OF_TASK) do redis.call('EXPIRE', P .. k, KEY_TTL) end
  for _, z in ipairs(redis.call('SMEMBERS', P .. 'zs')) do
    redis.call('EXPIRE', P .. 'rz:' .. z, KEY_TTL)
  end
  for _, f in ipairs(redis.call('HKEYS', P .. 'ah')) do
    redis.call('EXPIRE', P .. 'a:' .. f, KEY_TTL)
  end
  task.xa = now
end

local function save_task()
  redis.call('HSET', T, 'n', task.n, 's', task.s, 'd', task.d, 'db', fmt(task.db),
    'ub', fmt(task.ub), 'pg', fmt(task.pg), 'i', fmt(task.i), 'xa', fmt(task.xa),
    'ob', fmt(task.ob), 'pb', fmt(task.pb))
end

local function delete_task()
  for _, z in ipairs(redis.call('SMEMBERS', P .. 'zs')) do redis.call('DEL', P .. 'rz:' .. z) end
  for _, f in ipairs(redis.call('HKEYS', P .. 'ah')) do redis.call('DEL', P .. 'a:' .. f) end
  for _, k in ipairs(KEYS_OF_TASK) do redis.call('DEL', P .. k) end
  task = nil
end

-- BEP 3 bit order: piece i is bit 0x80 >> (i % 8) of byte i // 8
local function last_mask()
  local spare = (8 - task.np % 8) % 8
  return bit.band(bit.lshift(0xFF, spare), 0xFF)
end

local function full_have()
  if task.hb == 0 then return '' end
  return string.rep('\255', task.hb - 1) .. string.char(last_mask())
end

local function pad_tmp(key)
  if task.hb > 0 then
    local b = task.hb * 8 - 1
    redis.call('SETBIT', key, b, redis.call('GETBIT', key, b))
  end
end

-- holders per piece: apply the change of one peer's pieces from old to new (strings or false)
local function have_diff(old, new)
  old = old or ''; new = new or ''
  if old == new then return 0 end
  local hb = task.hb
  local ops, pieces, signs = {{}}, {{}}, {{}}
  local delta = 0
  for c = 1, hb, 32 do
    if string.sub(old, c, c + 31) ~= string.sub(new, c, c + 31) then
      for i = c, math.min(c + 31, hb) do
        local ob = string.byte(old, i) or 0
        local nb = string.byte(new, i) or 0
        if ob ~= nb then
          local add = bit.band(nb, bit.bnot(ob))
          local rem = bit.band(ob, bit.bnot(nb))
          for b = 0, 7 do
            local m = bit.rshift(0x80, b)
            local sign = 0
            if bit.band(add, m) ~= 0 then sign = 1 elseif bit.band(rem, m) ~= 0 then sign = -1 end
            if sign ~= 0 then
              local piece = (i - 1) * 8 + b
              ops[#ops + 1] = 'INCRBY'; ops[#ops + 1] = 'u16'
              ops[#ops + 1] = '#' .. piece; ops[#ops + 1] = sign
              pieces[#pieces + 1] = piece; signs[#signs + 1] = sign
              delta = delta + sign
            end
          end
        end
      end
    end
  end
  local k = 1
  while k <= #pieces do
    local last = math.min(#pieces, k + 999)
    local chunk = {{'OVERFLOW', 'SAT'}}
    for j = (k - 1) * 4 + 1, last * 4 do chunk[#chunk + 1] = ops[j] end
    local res = redis.call('BITFIELD', P .. 'cnt', unpack(chunk))
    for j = k, last do
      local v = res[j - k + 1]
      if signs[j] > 0 and v == 1 then redis.call('SETBIT', P .. 'av', pieces[j], 1)
      elseif signs[j] < 0 and v == 0 then redis.call('SETBIT', P .. 'av', pieces[j], 0) end
    end
    k = last + 1
  end
  return delta
end

-- ranking (tracker.selection): tiers by (bad, progress bucket, load bucket)
local function tier_key(progress, load, bad)
  if bad >= EXCLUDE then return -1 end
  local pb
  if progress >= 1.0 then pb = 0 elseif progress >= 0.5 then pb = 1
  elseif progress > 0 then pb = 2 else pb = 3 end
  local lb
  if load == false then lb = 2 elseif load <= 0 then lb = 0 elseif load <= 2 then lb = 1
  elseif load <= 5 then lb = 2 elseif load <= 11 then lb = 3 else lb = 4 end
  local br = 0
  if bad > 0 then br = 1 end
  return (br * 4 + pb) * 5 + lb
end

local function unlink(r)
  local key = r[R_RKEY]
  if key < 0 then return end
  local m = r[R_RMEM]
  redis.call('ZREM', P .. 'rk', m)
  if redis.call('HINCRBY', P .. 'tc', key, -1) <= 0 then redis.call('HDEL', P .. 'tc', key) end
  if r[R_RZONE] ~= '' then
    local zk = P .. 'rz:' .. r[R_RZONE]
    redis.call('ZREM', zk, m)
    if redis.call('EXISTS', zk) == 0 then redis.call('SREM', P .. 'zs', r[R_RZONE]) end
  end
  r[R_RKEY] = -1; r[R_RZONE] = ''; r[R_RMEM] = ''
end

local function link(pid, r, key)
  local m = pid .. r[R_C4] .. r[R_C6]
  redis.call('ZADD', P .. 'rk', key, m)
  redis.call('HINCRBY', P .. 'tc', key, 1)
  if r[R_ZONE] ~= '' then
    local zk = P .. 'rz:' .. r[R_ZONE]
    redis.call('ZADD', zk, key, m)
    redis.call('EXPIRE', zk, KEY_TTL)
    redis.call('SADD', P .. 'zs', r[R_ZONE])
  end
  r[R_RKEY] = key; r[R_RZONE] = r[R_ZONE]; r[R_RMEM] = m
end

-- distinct reporters within BAD_TTL; forgets older reports
local function bad_count(r, now)
  local reps = r[R_REPORTS]
  if not reps then return 0 end
  local kept = {{}}
  for j = 1, #reps, 2 do
    if reps[j + 1] > now - BAD_TTL then kept[#kept + 1] = reps[j]; kept[#kept + 1] = reps[j + 1] end
  end
  if #kept == 0 then r[R_REPORTS] = false; return 0 end
  r[R_REPORTS] = kept
  return #kept / 2
end

local function place(pid, r, now)
  local key = -1
  local bad = bad_count(r, now)
  if r[R_PORT] ~= 0 then key = tier_key(r[R_PROG], r[R_LOAD], bad) end
  local same = r[R_ZONE] == r[R_RZONE] and r[R_RMEM] == pid .. r[R_C4] .. r[R_C6]
  if key == r[R_RKEY] and (key < 0 or same) then
    return
  end
  unlink(r)
  if key >= 0 then link(pid, r, key) end
end

-- back-to-source assignments (tracker.assign)
local function terms(pid)
  local raw = redis.call('HGET', P .. 'ah', pid)
  if not raw then return nil end
  return cmsgpack.unpack(raw)   -- {{expires, descending, rate or -1, seen, count}}
end

local function set_terms(pid, a)
  redis.call('HSET', P .. 'ah', pid, cmsgpack.pack(a))
end

local function drop_assignment(pid)
  redis.call('DEL', P .. 'a:' .. pid)
  redis.call('HDEL', P .. 'ah', pid)
end

local function release(pid)
  if redis.call('HEXISTS', P .. 'ah', pid) == 0 then return end
  redis.call('BITOP', 'XOR', P .. 'as', P .. 'as', P .. 'a:' .. pid)
  drop_assignment(pid)
end

local function expire_assignments(now)
  local all = redis.call('HGETALL', P .. 'ah')
  local back = 0
  for j = 1, #all, 2 do
    local a = cmsgpack.unpack(all[j + 1])
    if a[1] <= now then
      back = back + a[5]
      release(all[j])
    end
  end
  return back
end

local function bits_of(s)
  local out = {{}}
  for i = 1, #s do
    local byte = string.byte(s, i)
    if byte ~= 0 then
      for b = 0, 7 do
        if bit.band(byte, bit.rshift(0x80, b)) ~= 0 then out[#out + 1] = (i - 1) * 8 + b end
      end
    end
  end
  return out
end

local function mask_of(pieces)
  local bytes = {{}}
  local top = -1
  for _, p in ipairs(pieces) do
    local i = math.floor(p / 8)
    bytes[i] = bit.bor(bytes[i] or 0, bit.rshift(0x80, p % 8))
    if i > top then top = i end
  end
  local parts = {{}}
  for i = 0, top do parts[#parts + 1] = string.char(bytes[i] or 0) end
  return table.concat(parts)
end

-- a peer leaves the task: counts, ranking, assignment, pieces
local function remove_peer(pid, r, now)
  redis.call('HDEL', P .. 'pr', pid)
  redis.call('ZREM', P .. 'seen', pid)
  redis.call('ZREM', P .. 'pg', pid)
  redis.call('SREM', P .. 'rp', pid)
  task.n = task.n - 1
  unlink(r)
  release(pid)
  if r[R_LEFT] == 0 then task.s = task.s - 1 end
  if r[R_HAVE] and task.np then have_diff(r[R_HAVE], false) end
  task.db = task.db - r[R_DBPS]
  task.ub = task.ub - r[R_UBPS]
  task.pg = task.pg - r[R_PROG]
  if task.n <= 0 then
    task.n = 0; task.i = now; task.db = 0; task.ub = 0; task.pg = 0
  end
end

local function depart(pid, r, now)
  if r[R_SEQ] == '' then return end
  redis.call('ZADD', P .. 'dep', now, pid)
  redis.call('HSET', P .. 'deps', pid, r[R_SEQ])
  redis.call('EXPIRE', P .. 'dep', SKEW + 60)
  redis.call('EXPIRE', P .. 'deps', SKEW + 60)
end

local function forget_departed(now)
  local old = redis.call('ZRANGEBYSCORE', P .. 'dep', '-inf', '(' .. fmt(now - SKEW))
  for _, pid in ipairs(old) do
    redis.call('ZREM', P .. 'dep', pid)
    redis.call('HDEL', P .. 'deps', pid)
  end
end

local function nonce_used(nonce, now)
  if nonce == '' then return false end
  return not redis.call('SET', P .. 'n:' .. nonce, '1', 'NX', 'EX', SKEW + 60)
end

local function worth_keeping()
  return task.np or task.d > 0
end
"""
