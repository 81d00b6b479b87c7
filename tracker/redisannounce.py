"""The announce script of the Redis store (``Swarm.announce`` in Lua), run after
``tracker.redislua.COMMON``: the record, the counts, the peers to list, the origin
assignment, in one atomic call."""

from __future__ import annotations

from typing import Final

#: One announce (``Swarm.announce``): ARGV now, peer id, df_seq or '', event (0 none,
#: 1 started, 2 completed, 3 stopped), port, compact4, compact6, left or '', downloaded,
#: uploaded, df_origin, df_have, has df_have (1/0), df_load or '', zone, df_source (1/0),
#: numwant, compact (1/0), may create a task (1/0), the asker's spread hash.
#: Returns {status, complete, incomplete, known or -1, peers4 or members, peers6,
#: assignment, {new peer, completion, assigned, origin bytes, peer bytes, descending}}.
ANNOUNCE: Final = r"""
local now = tonumber(ARGV[1])
local pid, seq, ev = ARGV[2], ARGV[3], ARGV[4]
local port, c4, c6 = tonumber(ARGV[5]), ARGV[6], ARGV[7]
local left = false
if ARGV[8] ~= '' then left = tonumber(ARGV[8]) end
local down, up, orig = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local have_arg = false
if ARGV[13] == '1' then have_arg = ARGV[12] end
local load = false
if ARGV[14] ~= '' then load = tonumber(ARGV[14]) end
local zone, can_source, numwant = ARGV[15], ARGV[16] == '1', tonumber(ARGV[17])
local compact, may_create, spread = ARGV[18] == '1', ARGV[19] == '1', tonumber(ARGV[20])
local stopped = ev == '3'
local flags = {0, 0, 0, 0, 0, 0}

load_task()
local r = nil
if task then
  local raw = redis.call('HGET', P .. 'pr', pid)
  if raw then r = cmsgpack.unpack(raw) end
end
if seq ~= '' then
  local last = nil
  if r then last = r[R_SEQ] else
    local when = redis.call('ZSCORE', P .. 'dep', pid)
    if when and now - tonumber(when) <= SKEW then last = redis.call('HGET', P .. 'deps', pid) end
  end
  if last and last ~= '' and seq_le(seq, last) then return {'replayed'} end
end

local function select(own4, own6, myzone)
  local out4, out6, members = {}, {}, {}
  local taken = {}
  local count = 0
  if numwant <= 0 then return out4, out6, members end
  local function consider(m)
    if taken[m] or string.sub(m, 1, 20) == pid then return false end
    local len = #m
    local m4, m6 = '', ''
    if len == 26 then m4 = string.sub(m, 21, 26)
    elseif len == 38 then m6 = string.sub(m, 21, 38)
    elseif len == 44 then m4 = string.sub(m, 21, 26); m6 = string.sub(m, 27, 44) end
    if (own4 ~= '' and m4 == own4) or (own6 ~= '' and m6 == own6) then return false end
    taken[m] = true
    count = count + 1
    if compact then
      if m4 ~= '' then out4[#out4 + 1] = m4 end
      if m6 ~= '' then out6[#out6 + 1] = m6 end
    else
      members[#members + 1] = m
    end
    return count >= numwant
  end
  -- walk ``n`` members of ``key`` from rank ``lo``, starting at the asker's point
  local function walk(key, lo, n)
    if n <= 0 then return false end
    local start = math.floor(spread * n / 4294967296)
    local seen = 0
    local pos = start
    while seen < n do
      local want = math.min(n - seen, numwant - count + 2, n - pos)
      local got = redis.call('ZRANGE', key, lo + pos, lo + pos + want - 1)
      for _, m in ipairs(got) do
        if consider(m) then return true end
      end
      seen = seen + want
      pos = pos + want
      if pos >= n then pos = 0 end
    end
    return false
  end
  local tc = redis.call('HGETALL', P .. 'tc')
  local tiers = {}
  for j = 1, #tc, 2 do
    local c = tonumber(tc[j + 1])
    if c > 0 then tiers[#tiers + 1] = {tonumber(tc[j]), c} end
  end
  table.sort(tiers, function(a, b) return a[1] < b[1] end)
  local lo = {}
  local acc = 0
  for j, t in ipairs(tiers) do lo[j] = acc; acc = acc + t[2] end
  local j = 1
  while j <= #tiers do
    local group = math.floor(tiers[j][1] / 5)
    local last = j
    while last + 1 <= #tiers and math.floor(tiers[last + 1][1] / 5) == group do last = last + 1 end
    if myzone ~= '' then
      local zk = P .. 'rz:' .. myzone
      for k = j, last do
        local key = tiers[k][1]
        local zlo = redis.call('ZCOUNT', zk, '-inf', '(' .. key)
        local zn = redis.call('ZCOUNT', zk, key, key)
        if walk(zk, zlo, zn) then return out4, out6, members end
      end
    end
    for k = j, last do
      if walk(P .. 'rk', lo[k], tiers[k][2]) then return out4, out6, members end
    end
    j = last + 1
  end
  return out4, out6, members
end

local function answer(chosen4, chosen6, members, assignment)
  local complete, incomplete, known = 0, 0, -1
  if task then
    complete = task.s
    incomplete = task.n - task.s
    if task.np then known = task.kc end
  end
  local peers
  if compact then peers = table.concat(chosen4 or {}) else peers = members or {} end
  return {'ok', complete, incomplete, known, peers, table.concat(chosen6 or {}),
    assignment or {}, flags}
end

if not task then
  if stopped then return answer() end
  if not may_create then return {'full'} end
  new_task(now)
end
local first = false
if not r then
  if stopped then return answer() end
  if task.n >= MAX_PEERS then
    local a4, a6, ms = select(c4, c6, zone)
    return answer(a4, a6, ms)
  end
  r = {'', now, now, now, down, up, orig, false, false, 0, 0, false, 0, 0, false, '', false,
    port, c4, c6, -1, '', '', false}
  task.n = task.n + 1
  first = true
  flags[1] = 1
end

-- fold the announce into the record (Swarm._update)
r[R_PORT] = port; r[R_C4] = c4; r[R_C6] = c6
if not first then
  local downloaded = math.max(0, down - r[R_DOWN])
  local uploaded = math.max(0, up - r[R_UP])
  local from_origin = math.max(0, orig - r[R_ORIG])
  task.ob = task.ob + from_origin
  flags[4] = from_origin
  local from_peers = math.max(0, downloaded - from_origin)
  task.pb = task.pb + from_peers
  flags[5] = from_peers
  local elapsed = now - r[R_LAST]
  if elapsed > 0 then
    local dbps, ubps = downloaded / elapsed, uploaded / elapsed
    task.db = task.db + dbps - r[R_DBPS]
    task.ub = task.ub + ubps - r[R_UBPS]
    r[R_DBPS] = dbps; r[R_UBPS] = ubps
  end
  if downloaded > 0 then r[R_GREW] = now end
end
r[R_DOWN] = down; r[R_UP] = up; r[R_ORIG] = orig; r[R_LAST] = now
local previous_left = r[R_LEFT]
if (left == 0) ~= (previous_left == 0) then
  if left == 0 then task.s = task.s + 1 else task.s = task.s - 1 end
end
if left == 0 and not r[R_COUNTED] and (ev == '2' or (previous_left and previous_left > 0)) then
  r[R_COUNTED] = true
  task.d = task.d + 1
  flags[2] = 1
end
r[R_LEFT] = left
r[R_LOAD] = load; r[R_ZONE] = zone; r[R_SOURCE] = can_source

local have = false
if task.np then
  if have_arg and #have_arg == task.hb then
    if task.hb > 0 then
      have = string.sub(have_arg, 1, task.hb - 1) ..
        string.char(bit.band(string.byte(have_arg, task.hb), last_mask()))
    else
      have = ''
    end
  elseif left == 0 then
    have = full_have()
  end
end
if have ~= r[R_HAVE] then
  if task.np then r[R_HC] = r[R_HC] + have_diff(r[R_HAVE], have) end
  if not have then r[R_HC] = 0 end
  r[R_HAVE] = have
end
local progress
if task.np and r[R_HAVE] and task.np > 0 then progress = r[R_HC] / task.np
elseif task.np and left and task.len > 0 then
  progress = math.min(1.0, math.max(0.0, (task.len - left) / task.len))
elseif left == 0 then progress = 1.0 else progress = 0.0 end
task.pg = task.pg + progress - r[R_PROG]
r[R_PROG] = progress
place(pid, r, now)
r[R_SEQ] = seq

if stopped then
  depart(pid, r, now)
  remove_peer(pid, r, now)
  if task.n == 0 and not worth_keeping() then
    delete_task()
    return answer()
  end
  save_task()
  return answer()
end

local a4, a6, ms = select(c4, c6, zone)

-- back-to-source (SourcePlanner.assign)
local assignment = {}
if task.np then
  if can_source and left ~= 0 then
    local budget, max_pieces = BUDGET, ASSIGN_MAX
    if not task.rng then budget = 1; max_pieces = task.np end
    local rate = false
    if task.rng then
      if r[R_DBPS] > 0 then rate = r[R_DBPS] end
    else
      rate = 1 / 0
    end
    local contenders = false
    if not first then contenders = task.n - task.s end
    -- settle: pieces now available leave their assignments (progress restarts the ttl)
    local tmp, tmp2 = P .. 'tmp', P .. 'tmp2'
    redis.call('BITOP', 'AND', tmp, P .. 'as', P .. 'av')
    if redis.call('BITCOUNT', tmp) > 0 then
      local all = redis.call('HGETALL', P .. 'ah')
      for j = 1, #all, 2 do
        local fid = all[j]
        local a = cmsgpack.unpack(all[j + 1])
        redis.call('BITOP', 'AND', tmp2, P .. 'a:' .. fid, P .. 'av')
        local fetched = redis.call('BITCOUNT', tmp2)
        if fetched > 0 then
          redis.call('BITOP', 'XOR', P .. 'a:' .. fid, P .. 'a:' .. fid, tmp2)
          redis.call('BITOP', 'XOR', P .. 'as', P .. 'as', tmp2)
          a[5] = a[5] - fetched
          if a[5] > 0 then
            a[1] = now + ASSIGN_TTL
            set_terms(fid, a)
          else
            drop_assignment(fid)
          end
        end
      end
    end
    expire_assignments(now)
    local held = terms(pid)
    local fetchers = redis.call('HLEN', P .. 'ah')
    if held or fetchers < budget then
      if held then
        held[4] = now
        if rate then held[3] = rate end
      end
      local target
      if not rate then target = math.min(2, max_pieces) else
        local wanted = rate * INTERVAL / task.pl
        if wanted >= max_pieces then target = max_pieces
        else target = math.max(1, math.ceil(wanted)) end
      end
      local have_n = 0
      if held then have_n = held[5] end
      redis.call('BITOP', 'OR', tmp, P .. 'av', P .. 'as')
      pad_tmp(tmp)
      local unassigned = task.np - redis.call('BITCOUNT', tmp)
      local slots
      if not contenders then
        slots = budget - (fetchers - (held and 1 or 0))
      else
        slots = math.min(budget, contenders)
      end
      local share = have_n + math.ceil(unassigned / math.max(1, slots))
      target = math.max(target, math.min(max_pieces, share))
      if have_n < target then
        local count = target - have_n
        local pieces = {}
        local pos = 0
        while count > 0 and pos < task.np do
          local first_free = redis.call('BITPOS', tmp, 0, pos, task.np - 1, 'BIT')
          if first_free < 0 then break end
          local stop = redis.call('BITPOS', tmp, 1, first_free, task.np - 1, 'BIT')
          if stop < 0 then stop = task.np end
          local run = math.min(stop - first_free, count)
          for p = first_free, first_free + run - 1 do pieces[#pieces + 1] = p end
          count = count - run
          pos = first_free + run
        end
        local descending = false
        if #pieces == 0 and not held then
          -- split: half of what a slow fetcher cannot reach before it hears of it
          local all = redis.call('HGETALL', P .. 'ah')
          local best, best_spare, best_a = nil, 0, nil
          local assigned = 0
          for j = 1, #all, 2 do
            local a = cmsgpack.unpack(all[j + 1])
            assigned = assigned + a[5]
            if a[3] >= 0 and a[3] < 1 / 0 then
              local ahead = math.max(0, now - a[4]) + INTERVAL + 1.0
              local reach = math.ceil(2.5 * a[3] * ahead / task.pl)
              local spare = a[5] - math.max(1, reach)
              if spare > best_spare then best, best_spare, best_a = all[j], spare, a end
            end
          end
          local share2 = math.ceil(assigned / (#all / 2 + 1))
          local n = math.min(math.floor(best_spare / 2), share2)
          if best and n >= 16 then
            local theirs = bits_of(redis.call('GET', P .. 'a:' .. best))
            if best_a[2] then
              for k = 1, n do pieces[#pieces + 1] = theirs[k] end
            else
              for k = #theirs - n + 1, #theirs do pieces[#pieces + 1] = theirs[k] end
            end
            local mask = mask_of(pieces)
            redis.call('SET', tmp2, mask)
            redis.call('BITOP', 'XOR', P .. 'a:' .. best, P .. 'a:' .. best, tmp2)
            redis.call('BITOP', 'XOR', P .. 'as', P .. 'as', tmp2)
            best_a[5] = best_a[5] - n
            set_terms(best, best_a)
            descending = not best_a[2]
            flags[3] = flags[3] - n
          end
        end
        if #pieces > 0 then
          redis.call('SET', tmp2, mask_of(pieces))
          redis.call('BITOP', 'OR', P .. 'as', P .. 'as', tmp2)
          redis.call('BITOP', 'OR', P .. 'a:' .. pid, P .. 'a:' .. pid, tmp2)
          redis.call('EXPIRE', P .. 'a:' .. pid, KEY_TTL)
          flags[3] = flags[3] + #pieces
          if held then
            held[1] = now + ASSIGN_TTL
            held[5] = held[5] + #pieces
          else
            held = {now + ASSIGN_TTL, descending, -1, now, #pieces}
          end
        end
      end
      if held then
        set_terms(pid, held)
        assignment = bits_of(redis.call('GET', P .. 'a:' .. pid) or '')
        if held[2] then
          local rev = {}
          for k = #assignment, 1, -1 do rev[#rev + 1] = assignment[k] end
          assignment = rev
          flags[6] = 1
        end
      end
    end
  elseif redis.call('HEXISTS', P .. 'ah', pid) == 1 then
    release(pid)
  end
end

redis.call('HSET', P .. 'pr', pid, cmsgpack.pack(r))
redis.call('ZADD', P .. 'seen', now, pid)
redis.call('ZADD', P .. 'pg', r[R_PROG], pid)
refresh(now)
save_task()
return answer(a4, a6, ms, assignment)
"""
