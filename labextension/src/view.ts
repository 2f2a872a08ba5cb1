/**
 * The view: the status-bar item, the details panel it opens, and the worker-log panel.
 *
 * Everything here renders a `WorkerStatusModel` and forwards button clicks to it; no
 * kernel or network access happens in this file.
 */

import { Widget } from '@lumino/widgets';

import { IResources, IStatusMessage, WorkerState } from './api';
import { WorkerStatusModel } from './model';

/** Bytes as "512 MB" / "1.5 GB". */
export function formatBytes(bytes: number): string {
  if (bytes >= 1024 ** 3) {
    return `${(bytes / 1024 ** 3).toFixed(1)} GB`;
  }
  return `${Math.round(bytes / 1024 ** 2)} MB`;
}

/** "CPU 12% · 142 MB", or "" when the worker has not been sampled. */
export function formatResources(resources: IResources | null | undefined): string {
  if (!resources) {
    return '';
  }
  const parts: string[] = [];
  if (typeof resources.cpu_percent === 'number') {
    parts.push(`CPU ${Math.round(resources.cpu_percent)}%`);
  }
  if (typeof resources.rss_bytes === 'number') {
    parts.push(formatBytes(resources.rss_bytes));
  }
  return parts.join(' · ');
}

/** The one-line text of the status-bar item. */
export function statusText(state: WorkerState, status: IStatusMessage | null): string {
  const parts = [`Rexec: ${state}`];
  if (state === 'starting' && status?.progress.length) {
    parts.push(status.progress[status.progress.length - 1]);
  }
  if (status && state !== 'not connected' && state !== 'dead') {
    parts.push(`env ${status.env_id ?? 'unknown'}`);
    const resources = formatResources(status.resources);
    if (resources) {
      parts.push(resources);
    }
  }
  return parts.join(' · ');
}

function element<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className: string,
  text = ''
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  node.className = className;
  node.textContent = text;
  return node;
}

/** The status-bar item: the current notebook's worker state; click for details. */
export class RexecStatusItem extends Widget {
  constructor(private readonly onOpen: (item: RexecStatusItem) => void) {
    super();
    this.addClass('rexec-StatusItem');
    this.node.title = 'Rexec remote worker: click for details and actions';
    this.node.addEventListener('click', () => this.onOpen(this));
    this.render();
  }

  /** The model shown, or null when the current notebook has none. */
  get model(): WorkerStatusModel | null {
    return this._model;
  }

  set model(model: WorkerStatusModel | null) {
    if (model === this._model) {
      return;
    }
    this._model?.changed.disconnect(this.render, this);
    this._model = model;
    model?.changed.connect(this.render, this);
    this.render();
  }

  render(): void {
    const model = this._model;
    const state = model?.state ?? 'not connected';
    this.node.dataset.state = state;
    this.node.textContent = statusText(state, model?.status ?? null);
  }

  private _model: WorkerStatusModel | null = null;
}

/** What the details panel needs from the application besides the model. */
export interface IPanelActions {
  openLog(model: WorkerStatusModel): void;
}

/** The popup opened from the status-bar item: details, restart, log, environment. */
export class RexecDetailsPanel extends Widget {
  constructor(
    private readonly model: WorkerStatusModel,
    private readonly actions: IPanelActions
  ) {
    super();
    this.addClass('rexec-DetailsPanel');
    const node = this.node;
    node.appendChild(element('h3', 'rexec-DetailsPanel-title', 'Rexec remote worker'));
    node.appendChild(this._details);
    const buttons = element('div', 'rexec-DetailsPanel-buttons');
    buttons.append(
      this._button('Restart worker', 'rexec-restart', () => void this._restart()),
      this._button('Open log', 'rexec-open-log', () => this.actions.openLog(this.model))
    );
    node.appendChild(buttons);
    node.appendChild(
      element('h4', 'rexec-DetailsPanel-subtitle', 'Change environment')
    );
    this._requirements.className = 'rexec-requirements';
    this._requirements.rows = 4;
    this._requirements.placeholder =
      'requirements, one per line, e.g.\nnumpy>=1.26\npandas<3';
    node.appendChild(this._requirements);
    node.appendChild(
      this._button('Apply', 'rexec-apply-env', () => void this._applyEnvironment())
    );
    node.appendChild(this._message);
    node.appendChild(this._output);
    model.changed.connect(this._renderDetails, this);
    this._renderDetails();
    void model.refresh();
  }

  dispose(): void {
    this.model.changed.disconnect(this._renderDetails, this);
    super.dispose();
  }

  private _button(label: string, className: string, onClick: () => void): HTMLElement {
    const button = element('button', `jp-Button jp-mod-styled ${className}`, label);
    button.addEventListener('click', onClick);
    return button;
  }

  private _renderDetails(): void {
    const status = this.model.status;
    const worker = status?.worker;
    const rows: [string, string][] = [
      ['State', this.model.state + (status?.detail ? ` (${status.detail})` : '')],
      [
        'Worker',
        worker?.pid
          ? `${worker.name ?? 'default'}: pid ${worker.pid} on ${worker.host ?? '?'}`
          : '-'
      ],
      [
        'Python',
        worker?.python ? `${worker.python} (rexec ${worker.rexec ?? '?'})` : '-'
      ],
      ['Environment', status?.env_id ?? 'unknown'],
      ['Resources', formatResources(status?.resources) || 'not sampled yet']
    ];
    if (status?.error) {
      rows.push(['Error', status.error]);
    }
    if (status?.worker_state === 'starting' && status.progress.length) {
      rows.push(['Progress', status.progress.join('\n')]);
    }
    const table = element('table', 'rexec-DetailsPanel-table');
    for (const [label, value] of rows) {
      const tr = element('tr', '');
      tr.append(element('th', '', label), element('td', '', value));
      table.appendChild(tr);
    }
    this._details.replaceChildren(table);
  }

  private async _restart(): Promise<void> {
    this._say('restarting the worker…');
    const result = await this.model.restart();
    this._say(result.message, result.ok);
  }

  private async _applyEnvironment(): Promise<void> {
    const text = this._requirements.value;
    if (!text.trim()) {
      this._say('write at least one requirement, one per line', false);
      return;
    }
    this._output.textContent = '';
    this._say('installing…');
    const result = await this.model.applyEnvironment(text, chunk => {
      this._output.textContent += chunk;
      this._output.scrollTop = this._output.scrollHeight;
    });
    this._say(result.message, result.ok);
  }

  private _say(message: string, ok?: boolean): void {
    this._message.textContent = message;
    this._message.dataset.outcome = ok === undefined ? 'pending' : ok ? 'ok' : 'error';
  }

  private _details = element('div', 'rexec-DetailsPanel-details');
  private _requirements = document.createElement('textarea');
  private _message = element('div', 'rexec-DetailsPanel-message');
  private _output = element('pre', 'rexec-DetailsPanel-output');
}

/** The worker's log in a main-area panel, reloaded on demand. */
export class WorkerLogView extends Widget {
  constructor(private readonly model: WorkerStatusModel) {
    super();
    this.addClass('rexec-LogView');
    this.id = `rexec-log-${Math.random().toString(36).slice(2)}`;
    this.title.label = 'Rexec worker log';
    this.title.closable = true;
    const reload = element(
      'button',
      'jp-Button jp-mod-styled rexec-reload-log',
      'Reload'
    );
    reload.addEventListener('click', () => void this.reload());
    this.node.append(reload, this._text);
    void this.reload();
  }

  async reload(): Promise<void> {
    this._text.textContent = 'loading…';
    const result = await this.model.fetchLog();
    this._text.textContent = result.ok ? (result.text ?? '') : result.message;
    this._text.dataset.outcome = result.ok ? 'ok' : 'error';
  }

  private _text = element('pre', 'rexec-LogView-text');
}
