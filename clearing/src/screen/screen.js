// The clearing operator's screen: reads the operator API with the operator's
// bearer token (kept in sessionStorage for this tab only) and shows a day's
// settlement, its records per hour, its quarantine and grey records, a card's
// account (the citizen ID only ever masked) and history, and the blacklist. Data is put in the page with textContent only, never as HTML.
// Money comes as integer fen or yuan text from the API and is only ever
// formatted as text here: no amount goes through floating-point arithmetic.
'use strict';

const TOKEN_KEY = 'clearing.operator.token';
const SVG_NS = 'http://www.w3.org/2000/svg';

const REASONS = {
  malformed: '格式错误',
  unknown_terminal: '未知终端',
  revoked_terminal: '终端已停用',
  unknown_card: '未知卡片',
  forged_tac: 'TAC 伪造',
  tac_rejected: 'TAC 被拒',
  blacklisted_card: '黑名单卡',
  late_upload: '上传过迟',
  duplicate: '重复交易',
  stale_counter: '计数器过期',
  counter_gap: '计数器缺口',
  balance_discontinuity: '余额不连续',
  lost: '挂失',
  replaced: '已换卡',
};
const STATES = { pending: '待处理', cleared: '已清算', quarantined: '已隔离' };
const GREY_STATES = { open: '待判定', confirmed: '已确认扣款', proved: '已由TAC证实', voided: '未扣款作废' };
const KINDS = { purchase: '消费', load: '充值' };
const ACTIONS = { add: '加入', remove: '移除' };
const CARD_STATUS = { active: '正常', lost: '挂失', replaced: '已换卡' };

const $ = (id) => document.getElementById(id);

/** A refusal from the API, with its status and message. */
class ApiFailure extends Error {
  constructor(status, message, field) {
    super(message);
    this.status = status;
    this.field = field;
  }
}

/** Fen (an integer, or its digits as text) as yuan text with two decimals: "1,234.56". */
function yuan(fen) {
  const text = typeof fen === 'string' ? fen.trim() : Number.isSafeInteger(fen) ? String(fen) : '';
  if (!/^-?\d+$/.test(text)) return '—';
  const negative = text.startsWith('-');
  const digits = (negative ? text.slice(1) : text).padStart(3, '0');
  const whole = digits.slice(0, -2).replace(/^0+(?=\d)/, '');
  return (negative ? '-' : '') + group(whole) + '.' + digits.slice(-2);
}

/** Yuan text from the API ("1234.50") with thousands separators. */
function yuanText(text) {
  const match = /^(-?)(\d+)\.(\d{2})$/.exec(String(text));
  return match ? match[1] + group(match[2]) + '.' + match[3] : '—';
}

function group(digits) {
  return digits.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
}

/** A card date-time YYYYMMDDhhmmss as "YYYY-MM-DD hh:mm:ss". */
function cardTime(text) {
  const m = /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})$/.exec(String(text));
  return m ? `${m[1]}-${m[2]}-${m[3]} ${m[4]}:${m[5]}:${m[6]}` : String(text);
}

function labelled(code, names) {
  return names[code] ? `${code} ${names[code]}` : code;
}

function message(id, text, isError) {
  const element = $(id);
  element.textContent = text || '';
  element.classList.toggle('error', Boolean(isError && text));
}

function signedOutMessage(status, detail) {
  if (status === 401) {
    return `Token refused (HTTP 401: ${detail}): check it and sign in again. 令牌无效（401），请检查后重新登录。`;
  }
  return `This token is not an operator's (HTTP 403: ${detail}): it may not read the clearing reports. ` +
    '此令牌不是操作员令牌（403），无权查看清算报表。';
}

/** GET an operator API path with the token; a 401 or 403 signs out with a clear message. */
async function api(path) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) throw new ApiFailure(401, 'not signed in');
  let response;
  try {
    response = await fetch(path, { headers: { Authorization: `Bearer ${token}` }, cache: 'no-store' });
  } catch (error) {
    throw new ApiFailure(0, `clearing did not answer (${error.message}) 清算服务无响应`);
  }
  if (response.ok) return response;
  let body = {};
  try {
    body = await response.json();
  } catch (_) {
    body = {};
  }
  const detail = body.error || response.statusText;
  if (response.status === 401 || response.status === 403) {
    signOut(signedOutMessage(response.status, detail));
  }
  throw new ApiFailure(response.status, detail, body.field);
}

async function apiJson(path) {
  return (await api(path)).json();
}

function failureText(error) {
  if (!(error instanceof ApiFailure)) return `Error 错误: ${error.message}`;
  if (error.status === 0) return error.message;
  const field = error.field ? ` (${error.field})` : '';
  return `${error.status}: ${error.message}${field}`;
}

function cell(row, text, className) {
  const td = document.createElement('td');
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function fillTable(id, items, columns, emptyText) {
  const body = $(id).querySelector('tbody');
  body.replaceChildren();
  if (items.length === 0) {
    const row = body.insertRow();
    const td = cell(row, emptyText, 'empty');
    td.colSpan = $(id).querySelectorAll('thead th').length;
    return;
  }
  for (const item of items) {
    const row = body.insertRow();
    for (const [value, className] of columns(item)) cell(row, value, className);
  }
}

// ---- sign-in ----

function showSignedIn(signedIn) {
  $('signin-section').hidden = signedIn;
  $('workspace').hidden = !signedIn;
  $('session').hidden = !signedIn;
}

function signOut(why) {
  sessionStorage.removeItem(TOKEN_KEY);
  showSignedIn(false);
  message('signin-message', why, Boolean(why));
  $('token').focus();
}

async function start() {
  // The token is checked by the first call; a refusal signs out with its message.
  try {
    await loadBlacklist();
  } catch (error) {
    if (!(error instanceof ApiFailure && (error.status === 401 || error.status === 403))) {
      signOut(failureText(error));
    }
    return;
  }
  showSignedIn(true);
  message('signin-message', '');
  await loadDay();
}

// ---- the day ----

function dayFromHash() {
  const match = /^#(\d{4}-\d{2}-\d{2})$/.exec(location.hash);
  return match ? match[1] : null;
}

function today() {
  const now = new Date();
  const pad = (n) => String(n).padStart(2, '0');
  return `${now.getFullYear()}-${pad(now.getMonth() + 1)}-${pad(now.getDate())}`;
}

async function loadDay() {
  const day = $('day').value;
  if (!/^\d{4}-\d{2}-\d{2}$/.test(day)) {
    message('day-message', 'Pick a date. 请选择日期。', true);
    return;
  }
  if (location.hash !== `#${day}`) history.replaceState(null, '', `#${day}`);
  message('day-message', `Loading ${day}… 加载中`);
  const path = `/v1/operator/days/${day}`;
  const results = await Promise.allSettled([
    apiJson(path).then(showSummary),
    apiJson(`${path}/hourly`).then(showHourly),
    apiJson(`${path}/quarantine`).then(showQuarantine),
    apiJson(`${path}/grey-records`).then(showGrey),
  ]);
  const failed = results.find((r) => r.status === 'rejected');
  if (failed) {
    message('day-message', failureText(failed.reason), true);
  } else {
    message('day-message', `Business day ${day} 营业日`);
    document.body.dataset.loadedDay = day;
  }
}

function showSummary(summary) {
  $('day-summary').hidden = false;
  $('sum-records').textContent = String(summary.records);
  $('sum-cleared').textContent = String(summary.cleared);
  $('sum-quarantined').textContent = String(summary.quarantined);
  $('sum-pending').textContent = String(summary.pending);
  const reconciled = summary.ledger_total_fen === 0 && summary.card_float_matches_shadows &&
    summary.settled_equals_cleared;
  $('sum-reconciled').textContent = reconciled ? 'Yes 是' : 'No 否';
  $('sum-reconciled').className = reconciled ? 'good' : 'bad';

  const lines = summary.settlements;
  fillTable('settlement', lines, (line) => [
    [String(line.settlement_run), 'num'],
    [line.merchant_id, 'mono'],
    [line.settlement_account, 'mono'],
    [String(line.record_count), 'num'],
    [yuan(line.gross_fen), 'num'],
    [line.fee_rate, 'num'],
    [yuan(line.fee_fen), 'num'],
    [yuan(line.net_fen), 'num'],
  ], 'No settlement 无结算');
  const count = lines.reduce((n, line) => n + line.record_count, 0);
  $('total-count').textContent = String(count);
  $('total-gross').textContent = yuan(summary.gross_fen);
  $('total-fee').textContent = yuan(summary.fee_fen);
  $('total-net').textContent = yuan(summary.net_fen);
  $('download-settlement').disabled = lines.length === 0;
  // The file's digest comes with the file (the summary read back from the database does not carry it).
  $('settlement-sha256').textContent = lines.length && summary.settlement_sha256 ? `SHA-256 ${summary.settlement_sha256}` : '';
  message('settlement-message', lines.length ? '' :
    `${summary.business_day} is not settled yet: run clearing run-day. 当日尚未结算，请运行 clearing run-day。`);
}

async function downloadSettlement() {
  const day = document.body.dataset.loadedDay;
  try {
    const response = await api(`/v1/operator/days/${day}/settlement`);
    const digest = response.headers.get('X-Settlement-Sha256') || '';
    const blob = new Blob([await response.text()], { type: 'text/csv' });
    const link = document.createElement('a');
    link.href = URL.createObjectURL(blob);
    link.download = `settlement-${day}.csv`;
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
    $('settlement-sha256').textContent = `SHA-256 ${digest} (signed by the HSM 已由 HSM 签名)`;
  } catch (error) {
    message('settlement-message', failureText(error), true);
  }
}

function showQuarantine(entries) {
  fillTable('quarantine', entries, (entry) => [
    [entry.transaction_id === null ? '— (refused at upload 上传时拒收)' : String(entry.transaction_id), 'num'],
    [entry.terminal_id, 'mono'],
    [entry.batch_id, 'mono'],
    [String(entry.record_index), 'num'],
    [labelled(entry.reason, REASONS), 'reason'],
    [entry.detail, 'detail'],
  ], 'Nothing quarantined 无隔离记录');
  message('quarantine-message', entries.length ? `${entries.length} record(s) 条记录` : '');
}

function showGrey(entries) {
  fillTable('grey', entries, (entry) => [
    [String(entry.grey_id), 'num'],
    [entry.terminal_id, 'mono'],
    [entry.card_serial, 'mono'],
    [String(entry.counter), 'num'],
    [yuan(entry.amount_fen), 'num'],
    [cardTime(entry.occurred_at), 'mono'],
    [labelled(entry.state, GREY_STATES), `grey-${entry.state}`],
    [entry.merchant_id || '—', 'mono'],
    [entry.detail || '', 'detail'],
  ], 'No grey records 无灰记录');
  const open = entries.filter((entry) => entry.state === 'open').length;
  message('grey-message', entries.length ?
    `${entries.length} grey record(s) 条灰记录, ${open} open 待判定` : '');
}

// ---- the hourly plot ----

function svg(tag, attributes, text) {
  const element = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, String(value));
  if (text !== undefined) element.textContent = text;
  return element;
}

/** A round step (1, 2 or 5 times a power of ten, at least 1) for about five grid lines. */
function niceStep(max) {
  const raw = max / 5;
  const power = 10 ** Math.floor(Math.log10(Math.max(raw, 1)));
  for (const m of [1, 2, 5, 10]) {
    if (m * power >= raw) return Math.max(1, m * power);
  }
  return Math.max(1, 10 * power);
}

function showHourly(day) {
  const [width, height, left, right, top, bottom] = [960, 260, 44, 10, 22, 30];
  const plotWidth = width - left - right;
  const plotHeight = height - top - bottom;
  const max = Math.max(1, ...day.hours.map((h) => h.records));
  const step = niceStep(max);
  const ceiling = Math.ceil(max / step) * step;
  const y = (count) => top + plotHeight - (count / ceiling) * plotHeight;
  const root = svg('svg', {
    viewBox: `0 0 ${width} ${height}`,
    role: 'img',
    'aria-label': `Records per hour on ${day.business_day} 每小时记录数`,
  });
  for (let value = 0; value <= ceiling; value += step) {
    root.appendChild(svg('line', { class: 'grid', x1: left, x2: width - right, y1: y(value), y2: y(value) }));
    root.appendChild(svg('text', { x: left - 6, y: y(value) + 4, 'text-anchor': 'end' }, String(value)));
  }
  const slot = plotWidth / 24;
  const barWidth = slot * 0.7;
  for (const hour of day.hours) {
    const hh = String(hour.hour).padStart(2, '0');
    const group = svg('g', {
      class: 'hour',
      'data-hour': hour.hour,
      'data-records': hour.records,
      'data-quarantined': hour.quarantined,
    });
    const x = left + hour.hour * slot + (slot - barWidth) / 2;
    group.appendChild(svg('title', {},
      `${hh}:00–${hh}:59: ${hour.records} record(s) 笔, ${hour.quarantined} quarantined 已隔离; ` +
      `purchases 消费 ${hour.purchases} ¥${yuanText(hour.purchase_yuan)}, loads 充值 ${hour.loads} ¥${yuanText(hour.load_yuan)}`));
    if (hour.records > 0) {
      group.appendChild(svg('rect', {
        class: 'bar', x, y: y(hour.records), width: barWidth, height: y(0) - y(hour.records),
      }));
      if (hour.quarantined > 0) {
        group.appendChild(svg('rect', {
          class: 'bar quarantined', x, y: y(hour.quarantined), width: barWidth, height: y(0) - y(hour.quarantined),
        }));
      }
      group.appendChild(svg('text', { class: 'count', x: x + barWidth / 2, y: y(hour.records) - 4, 'text-anchor': 'middle' },
        String(hour.records)));
    }
    group.appendChild(svg('text', { x: x + barWidth / 2, y: height - bottom + 16, 'text-anchor': 'middle' }, hh));
    root.appendChild(group);
  }
  root.appendChild(svg('line', { class: 'axis', x1: left, x2: width - right, y1: y(0), y2: y(0) }));
  root.appendChild(svg('line', { class: 'axis', x1: left, x2: left, y1: top, y2: y(0) }));
  $('hourly-plot').replaceChildren(root);
  const total = day.hours.reduce((n, h) => n + h.records, 0);
  message('hourly-message', total ? `${total} record(s) 笔 · red: quarantined 红色：已隔离` :
    'No records this day 当日无记录');
}

// ---- card history ----

async function loadHistory() {
  const serial = $('serial').value.trim().toUpperCase();
  if (!/^[0-9A-F]{16}$/.test(serial)) {
    message('history-message', 'A card serial is 16 hex digits. 卡号为16位十六进制数字。', true);
    return;
  }
  message('history-message', `Loading ${serial}… 加载中`);
  $('card-account').hidden = true;
  try {
    const [account, entries] = await Promise.all([
      apiJson(`/v1/operator/cards/${serial}`),
      apiJson(`/v1/operator/cards/${serial}/history`),
    ]);
    $('account-name').textContent = account.cardholder_name || '—';
    $('account-citizen').textContent = account.citizen_id_masked || '—';
    $('account-status').textContent = labelled(account.status, CARD_STATUS) +
      (account.replaced_by ? ` → ${account.replaced_by}` : '');
    $('account-balance').textContent = yuanText(account.balance_yuan);
    $('account-counters').textContent =
      `purchase 消费 ${account.offline_counter} · load 充值 ${account.online_counter}`;
    $('card-account').hidden = false;
    fillTable('history', entries, (entry) => [
      [String(entry.transaction_id), 'num'],
      [labelled(entry.kind, KINDS), ''],
      [String(entry.counter), 'num'],
      [yuan(entry.balance_before_fen), 'num'],
      [yuan(entry.amount_fen), 'num'],
      [entry.terminal_number, 'mono'],
      [cardTime(entry.date_time), 'mono'],
      [labelled(entry.state, STATES), `state-${entry.state}`],
      [entry.reason ? labelled(entry.reason, REASONS) : '', 'wrap'],
    ], 'No records for this card 此卡无记录');
    message('history-message', `Card ${serial} 卡号: ${entries.length} record(s), newest first 条记录，最新在前`);
  } catch (error) {
    fillTable('history', [], () => [], '');
    const text = error instanceof ApiFailure && error.status === 404 ?
      `No card ${serial} here. 无此卡：${serial}` : failureText(error);
    message('history-message', text, true);
  }
}

// ---- blacklist ----

async function loadBlacklist() {
  const entries = await apiJson('/v1/operator/blacklist');
  fillTable('blacklist', entries, (entry) => [
    [String(entry.version), 'num'],
    [entry.card_serial, 'mono'],
    [labelled(entry.action, ACTIONS), `action-${entry.action}`],
    [labelled(entry.reason, REASONS), ''],
    [cardTime(entry.listed_at), 'mono'],
    [entry.card_status ? labelled(entry.card_status, CARD_STATUS) : '—', ''],
  ], 'The blacklist is empty 黑名单为空');
  message('blacklist-message', `${entries.length} version(s), newest first 个版本，最新在前`);
}

async function refreshBlacklist() {
  try {
    await loadBlacklist();
  } catch (error) {
    message('blacklist-message', failureText(error), true);
  }
}

// ---- wiring ----

document.addEventListener('DOMContentLoaded', () => {
  $('day').value = dayFromHash() || today();
  $('signin').addEventListener('submit', (event) => {
    event.preventDefault();
    const token = $('token').value.trim();
    $('token').value = '';
    if (!token) {
      message('signin-message', 'Enter your operator token. 请输入操作员令牌。', true);
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    message('signin-message', 'Signing in… 登录中');
    start();
  });
  $('sign-out').addEventListener('click', () => signOut('Signed out. 已退出。'));
  $('day-form').addEventListener('submit', (event) => {
    event.preventDefault();
    loadDay();
  });
  $('card-form').addEventListener('submit', (event) => {
    event.preventDefault();
    loadHistory();
  });
  $('download-settlement').addEventListener('click', downloadSettlement);
  $('refresh-blacklist').addEventListener('click', refreshBlacklist);
  window.addEventListener('hashchange', () => {
    const day = dayFromHash();
    if (day && day !== $('day').value) {
      $('day').value = day;
      if (sessionStorage.getItem(TOKEN_KEY)) loadDay();
    }
  });
  if (sessionStorage.getItem(TOKEN_KEY)) {
    start();
  } else {
    showSignedIn(false);
  }
});
