// The degrade console: a page over the admin JSON API. Every piece of data
// goes into the page as text (textContent, setAttribute), never as HTML.
'use strict';
(() => {
  const TOKEN_KEY = 'bulwark.degrade.token';
  const $ = (id) => document.getElementById(id);

  let token = sessionStorage.getItem(TOKEN_KEY) || '';
  let me = null; // {name, role} once signed in
  let gen = 0; // grows at every sign-in and sign-out: an older stream stops
  let streamAbort = null;
  let live = false;
  let lastLoad = 0;
  const rows = new Map(); // feature name → its row's elements

  const LEVELS = {none: '无 None', optional: '可选 Optional', important: '重要 Important', core: '核心 Core'};
  const SOURCES = {manual: '手动 Manual', shed: '降级 Shed', trigger: '触发 Trigger', default: '默认 Default'};
  const ACTIONS = {set: '设置 Set', unpin: '取消固定 Unpin', shed: '降级 Shed', restore: '恢复 Restore'};

  // el builds an element; strings among kids become text nodes.
  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'text') e.textContent = v;
      else if (k === 'class') e.className = v;
      else e.setAttribute(k, v);
    }
    for (const k of kids) if (k != null) e.append(k);
    return e;
  }

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function headers(json) {
    const h = {};
    if (token) h.Authorization = 'Bearer ' + token;
    if (json) h['Content-Type'] = 'application/json';
    return h;
  }

  // api calls the JSON API at a path relative to the console, so the
  // console works under any mount prefix.
  async function api(method, path, body) {
    const res = await fetch(path, {
      method,
      headers: headers(body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
    });
    let data = null;
    try {
      data = await res.json();
    } catch (_) {
      // Not JSON: the status says enough.
    }
    if (!res.ok) {
      const msg = (data && data.message) || res.status + ' ' + res.statusText;
      if (res.status === 401 && me) signedOut();
      throw new ApiError(res.status, msg);
    }
    return data;
  }

  let sayTimer = 0;
  function say(text, isError) {
    const m = $('message');
    m.textContent = text;
    m.hidden = !text;
    m.className = isError ? 'message error' : 'message';
    clearTimeout(sayTimer);
    if (text && !isError) sayTimer = setTimeout(() => say(''), 4000);
  }

  const reason = () => $('reason').value.trim();
  const levelLabel = (l) => LEVELS[l] || l;
  const fmtTime = (s) => (s ? new Date(s).toLocaleString() : '');

  function stateText(st) {
    if (!st) return '—';
    let t = st.mode === 'on' ? '开 On' : st.mode === 'off' ? '关 Off' : (st.percent || 0) + '%';
    if (st.rules && st.rules.length) t += ' · ' + st.rules.length + ' 条规则 rules';
    if (st.messages && Object.keys(st.messages).length) t += ' · 提示 message';
    return t;
  }

  // describe summarises an audit entry's before or after.
  function describe(action, v) {
    if (v == null) return '—';
    if (action === 'shed' || action === 'restore') return levelLabel(v);
    return stateText(v.state);
  }

  function setOperatorControls() {
    const op = !!me && me.role === 'operator';
    for (const c of document.querySelectorAll('.op')) c.disabled = !op;
    document.body.classList.toggle('readonly', !op);
  }

  function tbodyFor(level) {
    for (const s of document.querySelectorAll('section.level')) {
      if (s.dataset.level === level) return s.querySelector('tbody');
    }
    return null;
  }

  function makeRow(f) {
    const r = {f};
    r.state = el('span', {class: 'badge'});
    r.source = el('span');
    r.toggle = el('input', {type: 'checkbox', class: 'toggle op', 'data-feature': f.name,
      'aria-label': '开关 ' + f.name, title: '对所有人开/关（清除规则）On or off for everyone (clears rules)'});
    r.toggle.addEventListener('change', () => {
      const st = {mode: r.toggle.checked ? 'on' : 'off'};
      if (r.f.source === 'manual' && r.f.state.messages) st.messages = r.f.state.messages;
      setState(f.name, st);
    });
    r.percent = el('input', {type: 'number', min: '0', max: '100', step: 'any', class: 'percent op',
      'aria-label': '比例 ' + f.name, placeholder: '0–100'});
    const setPercent = el('button', {type: 'button', class: 'op', text: '设置 Set'});
    setPercent.addEventListener('click', () => {
      const st = {mode: 'percent', percent: Number(r.percent.value)};
      if (r.f.source === 'manual') {
        if (r.f.state.rules) st.rules = r.f.state.rules;
        if (r.f.state.messages) st.messages = r.f.state.messages;
      }
      setState(f.name, st);
    });
    r.unpin = el('button', {type: 'button', class: 'op unpin', text: '取消固定 Unpin',
      title: '回到降级、触发或默认状态 Back to shedding, triggers or the default'});
    r.unpin.addEventListener('click', () => unpin(f.name));
    const edit = el('button', {type: 'button', text: '编辑 Edit'});
    r.tr = el('tr', {'data-feature': f.name},
      el('td', null, el('strong', {text: f.name}), f.description ? el('div', {class: 'muted', text: f.description}) : null),
      el('td', null, r.state),
      el('td', null, r.source),
      el('td', null, r.toggle),
      el('td', {class: 'nowrap'}, r.percent, ' ', setPercent),
      el('td', null, edit, ' ', r.unpin));
    r.editor = makeEditor(r);
    edit.addEventListener('click', () => {
      if (r.editor.hidden) fillEditor(r);
      r.editor.hidden = !r.editor.hidden;
    });
    const tb = tbodyFor(f.level);
    if (tb) tb.append(r.tr, r.editor);
    return r;
  }

  // makeEditor builds the row that edits the whole state: mode, percent,
  // messages by locale and rules as JSON.
  function makeEditor(r) {
    const name = r.f.name;
    r.ed = {
      mode: el('select', {class: 'op', 'aria-label': '模式 Mode'},
        el('option', {value: 'on', text: '开 On'}), el('option', {value: 'off', text: '关 Off'}),
        el('option', {value: 'percent', text: '比例 Percent'})),
      percent: el('input', {type: 'number', min: '0', max: '100', step: 'any', class: 'percent op'}),
      zh: el('input', {type: 'text', class: 'op', placeholder: '当前系统繁忙，部分功能暂不可用'}),
      en: el('input', {type: 'text', class: 'op', placeholder: 'The service is busy…'}),
      def: el('input', {type: 'text', class: 'op', placeholder: '其他语言 Other locales'}),
      rules: el('textarea', {class: 'op', rows: '4', spellcheck: 'false',
        placeholder: '[{"when":[{"attr":"model","op":"in","values":["X"]}],"enabled":false}]'}),
    };
    const apply = el('button', {type: 'button', class: 'op', text: '应用 Apply'});
    const cancel = el('button', {type: 'button', text: '取消 Cancel'});
    const tr = el('tr', {class: 'editor'}, el('td', {colspan: '6'}, el('div', {class: 'grid'},
      el('label', null, '模式 Mode', r.ed.mode),
      el('label', null, '比例 Percent', r.ed.percent),
      el('label', null, '中文提示 Message (zh)', r.ed.zh),
      el('label', null, '英文提示 Message (en)', r.ed.en),
      el('label', null, '默认提示 Message (other)', r.ed.def),
      el('label', {class: 'wide'}, '规则 Rules (JSON)', r.ed.rules),
      el('div', {class: 'wide'}, apply, ' ', cancel))));
    tr.hidden = true;
    cancel.addEventListener('click', () => {
      tr.hidden = true;
    });
    apply.addEventListener('click', async () => {
      const st = {mode: r.ed.mode.value};
      if (st.mode === 'percent') st.percent = Number(r.ed.percent.value);
      const msgs = {};
      if (r.ed.zh.value.trim()) msgs.zh = r.ed.zh.value.trim();
      if (r.ed.en.value.trim()) msgs.en = r.ed.en.value.trim();
      if (r.ed.def.value.trim()) msgs[''] = r.ed.def.value.trim();
      if (Object.keys(msgs).length) st.messages = msgs;
      const rules = r.ed.rules.value.trim();
      if (rules) {
        try {
          st.rules = JSON.parse(rules);
        } catch (e) {
          say('规则不是有效的 JSON Rules are not valid JSON: ' + e.message, true);
          return;
        }
      }
      if (await setState(name, st)) tr.hidden = true;
    });
    return tr;
  }

  function fillEditor(r) {
    const st = r.f.state;
    const msgs = st.messages || r.f.messages || {};
    r.ed.mode.value = st.mode;
    r.ed.percent.value = st.mode === 'percent' ? String(st.percent || 0) : '';
    r.ed.zh.value = msgs.zh || '';
    r.ed.en.value = msgs.en || '';
    r.ed.def.value = msgs[''] || '';
    r.ed.rules.value = st.rules && st.rules.length ? JSON.stringify(st.rules, null, 2) : '';
  }

  function updateRow(r, f) {
    r.f = f;
    r.tr.dataset.source = f.source;
    r.tr.dataset.mode = f.state.mode;
    r.state.textContent = stateText(f.state);
    r.state.className = 'badge ' + f.state.mode;
    let src = SOURCES[f.source] || f.source;
    if (f.trigger) src += ' · ' + f.trigger;
    if (f.source === 'manual' && f.changed) src += ' · ' + fmtTime(f.changed);
    r.source.textContent = src;
    r.toggle.checked = f.state.mode === 'on';
    r.toggle.indeterminate = f.state.mode === 'percent';
    if (document.activeElement !== r.percent) {
      r.percent.value = f.state.mode === 'percent' ? String(f.state.percent || 0) : '';
    }
    r.unpin.hidden = f.source !== 'manual';
  }

  function renderFeatures(ov) {
    $('shed').textContent = levelLabel(ov.shed);
    $('shed').className = ov.shed === 'none' ? '' : 'warn';
    $('store').textContent = ov.store_healthy ? '存储正常 Store OK' : '存储不可达，沿用最后状态 Store unreachable: last known state';
    $('store').className = ov.store_healthy ? '' : 'warn';
    const seen = new Set();
    for (const f of ov.features) {
      seen.add(f.name);
      let r = rows.get(f.name);
      if (!r) {
        r = makeRow(f);
        rows.set(f.name, r);
      }
      updateRow(r, f);
    }
    for (const [name, r] of rows) {
      if (!seen.has(name)) {
        r.tr.remove();
        r.editor.remove();
        rows.delete(name);
      }
    }
    setOperatorControls();
  }

  function renderAudit(entries) {
    const tb = document.querySelector('#audit tbody');
    const frag = document.createDocumentFragment();
    for (const e of entries) {
      frag.append(el('tr', {class: 'audit-entry', 'data-action': e.action, 'data-feature': e.feature || ''},
        el('td', {class: 'nowrap', text: fmtTime(e.at)}),
        el('td', {text: e.by}),
        el('td', {text: ACTIONS[e.action] || e.action}),
        el('td', {text: e.feature || '—'}),
        el('td', {text: describe(e.action, e.before)}),
        el('td', {text: describe(e.action, e.after)}),
        el('td', {text: e.reason || ''})));
    }
    if (!entries.length) frag.append(el('tr', null, el('td', {colspan: '7', class: 'muted', text: '暂无记录 No changes yet'})));
    tb.replaceChildren(frag);
  }

  async function load() {
    if (!me) return;
    lastLoad = Date.now();
    try {
      const [ov, au] = await Promise.all([api('GET', 'api/features'), api('GET', 'api/audit?n=50')]);
      renderFeatures(ov);
      renderAudit(au.entries);
    } catch (e) {
      say(e.message, true);
    }
  }

  let soon = false;
  function refreshSoon() {
    if (soon) return;
    soon = true;
    setTimeout(() => {
      soon = false;
      load();
    }, 100);
  }

  async function setState(name, st) {
    try {
      const f = await api('PUT', 'api/features/' + encodeURIComponent(name), {state: st, reason: reason()});
      const r = rows.get(name);
      if (r) updateRow(r, f);
      say('已更新 Updated: ' + name);
      return true;
    } catch (e) {
      say(e.message, true);
      return false;
    } finally {
      refreshSoon();
    }
  }

  async function unpin(name) {
    try {
      await api('DELETE', 'api/features/' + encodeURIComponent(name), {reason: reason()});
      say('已取消固定 Unpinned: ' + name);
    } catch (e) {
      say(e.message, true);
    }
    refreshSoon();
  }

  async function shed(level) {
    if (!confirm('降级 Shed: ' + levelLabel(level) + '?')) return;
    try {
      renderFeatures(await api('POST', 'api/shed', {level, reason: reason()}));
      say('已降级 Shed: ' + levelLabel(level));
    } catch (e) {
      say(e.message, true);
    }
    refreshSoon();
  }

  async function restore() {
    try {
      renderFeatures(await api('POST', 'api/restore', {reason: reason()}));
      say('已恢复 Restored');
    } catch (e) {
      say(e.message, true);
    }
    refreshSoon();
  }

  function setLive(on) {
    live = on;
    $('live').textContent = on ? '实时 Live' : '轮询 Polling';
    $('live').className = on ? 'on' : 'off';
  }

  const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));

  // stream reads the server-sent events with fetch, which, unlike
  // EventSource, can send the Authorization header; any event means
  // "load again".
  async function stream(g) {
    while (g === gen) {
      const ctrl = new AbortController();
      streamAbort = ctrl;
      try {
        const res = await fetch('api/events', {headers: headers(false), cache: 'no-store', signal: ctrl.signal});
        if (!res.ok || !res.body) throw new ApiError(res.status, 'events: ' + res.status);
        setLive(true);
        refreshSoon(); // catch up on what happened while disconnected
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = '';
        for (;;) {
          const {value, done} = await reader.read();
          if (done || g !== gen) break;
          buf += value;
          let i;
          while ((i = buf.indexOf('\n\n')) >= 0) {
            const block = buf.slice(0, i);
            buf = buf.slice(i + 2);
            if (/^event: /m.test(block)) refreshSoon();
          }
        }
      } catch (_) {
        // Dropped or refused: poll, and try again shortly.
      }
      if (g === gen) setLive(false);
      await sleep(3000);
    }
  }

  async function signIn() {
    const g = ++gen;
    if (streamAbort) streamAbort.abort();
    me = null;
    try {
      me = await api('GET', 'api/me');
    } catch (e) {
      if (g !== gen) return;
      signedOut();
      if (e.status === 401) say(token ? '令牌无效 The token is not valid' : '请输入令牌 Enter a token', !!token);
      else say(e.message, true);
      return;
    }
    if (g !== gen) return;
    $('whoami').textContent = me.name + ' · ' + (me.role === 'operator' ? '操作员 Operator' : '只读 Viewer');
    setOperatorControls();
    say('');
    await load();
    stream(g);
  }

  function signedOut() {
    me = null;
    gen++;
    if (streamAbort) streamAbort.abort();
    $('whoami').textContent = '未登录 Signed out';
    $('live').textContent = '离线 Offline';
    $('live').className = 'off';
    for (const r of rows.values()) {
      r.tr.remove();
      r.editor.remove();
    }
    rows.clear();
    document.querySelector('#audit tbody').replaceChildren();
    setOperatorControls();
  }

  $('signin').addEventListener('submit', (ev) => {
    ev.preventDefault();
    token = $('token').value.trim();
    $('token').value = '';
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
    signIn();
  });
  $('signout').addEventListener('click', () => {
    token = '';
    sessionStorage.removeItem(TOKEN_KEY);
    signedOut();
    say('已退出 Signed out');
  });
  for (const b of document.querySelectorAll('[data-shed]')) b.addEventListener('click', () => shed(b.dataset.shed));
  $('restore').addEventListener('click', restore);

  // While the stream is down, poll every two seconds; while it is up,
  // re-read every 15 s anyway, since not every change makes an event
  // (a new message alone does not).
  setInterval(() => {
    if (me && Date.now() - lastLoad > (live ? 15000 : 2000)) load();
  }, 1000);

  setOperatorControls();
  signIn();
})();
