/**
 * The model: the remote worker's state for one notebook, kept up to date from its kernel.
 *
 * A model follows its notebook's session context: when the kernel changes or restarts it
 * opens a new status comm, and it forgets the state when the comm closes. The view reads
 * `status` and listens to `changed`; it never talks to the kernel itself.
 */

import { ISessionContext } from '@jupyterlab/apputils';
import { Kernel } from '@jupyterlab/services';
import { ISignal, Signal } from '@lumino/signaling';

import { IActionResult, IStatusMessage, StatusComm, WorkerState } from './api';

export class WorkerStatusModel {
  constructor(readonly sessionContext: ISessionContext) {
    sessionContext.kernelChanged.connect(this._onKernelChanged, this);
    sessionContext.statusChanged.connect(this._onKernelStatus, this);
    this._follow(sessionContext.session?.kernel ?? null);
  }

  /** Emitted whenever `status` or `available` changes. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** True while the kernel has a Rexec status channel open (Rexec kernel, or magics). */
  get available(): boolean {
    return this._comm?.connected ?? false;
  }

  /** The last state the kernel reported, or null before the first report. */
  get status(): IStatusMessage | null {
    return this._status;
  }

  /** The state to show: "not connected" until the kernel has reported one. */
  get state(): WorkerState {
    return this._status?.worker_state ?? 'not connected';
  }

  get isDisposed(): boolean {
    return this._disposed;
  }

  /** Stop the remote worker and start a fresh one (its variables are lost). */
  restart(): Promise<IActionResult> {
    return this._request(comm => comm.request('restart'));
  }

  /** The last `tail` lines of the worker's log, in `text`. */
  fetchLog(tail = 500): Promise<IActionResult> {
    return this._request(comm => comm.request('log', { tail }));
  }

  /** Install `requirements` (requirements.txt text) into the worker, streaming pip's output. */
  applyEnvironment(
    requirements: string,
    onOutput: (text: string) => void
  ): Promise<IActionResult> {
    return this._request(comm =>
      comm.request('environment', { requirements }, onOutput)
    );
  }

  /** Ask for a fresh status, including a new CPU/memory sample. */
  refresh(): Promise<IActionResult> {
    return this._request(comm => comm.request('refresh'));
  }

  dispose(): void {
    if (this._disposed) {
      return;
    }
    this._disposed = true;
    this._comm?.dispose();
    this._comm = null;
    Signal.clearData(this);
  }

  private _request(
    send: (comm: StatusComm) => Promise<IActionResult>
  ): Promise<IActionResult> {
    if (!this._comm) {
      return Promise.resolve({ ok: false, message: 'no kernel' });
    }
    return send(this._comm);
  }

  private _onKernelChanged(
    _: ISessionContext,
    change: { newValue: Kernel.IKernelConnection | null }
  ): void {
    this._follow(change.newValue);
  }

  private _onKernelStatus(context: ISessionContext, status: Kernel.Status): void {
    if (status === 'restarting' || status === 'autorestarting' || status === 'dead') {
      // The kernel side is gone; a restarted one gets a new comm once it is idle.
      this._comm?.reset();
      this._reconnect = status !== 'dead';
      this._setStatus(null);
    } else if (status === 'idle' && this._reconnect && this._comm) {
      this._reconnect = false;
      void this._connect(this._comm);
    }
  }

  private _follow(kernel: Kernel.IKernelConnection | null): void {
    this._comm?.dispose();
    this._comm = null;
    this._setStatus(null);
    if (!kernel) {
      return;
    }
    const comm = new StatusComm(kernel);
    this._comm = comm;
    comm.statusReceived.connect((_, message) => this._setStatus(message), this);
    comm.connectedChanged.connect((_, connected) => {
      if (!connected) {
        this._status = null;
      }
      this._changed.emit();
    }, this);
    void this._connect(comm);
  }

  private async _connect(comm: StatusComm): Promise<void> {
    try {
      await this.sessionContext.ready;
      if (comm === this._comm) {
        await comm.connect();
      }
    } catch (reason) {
      console.warn('rexec: could not open the status channel', reason);
    }
  }

  private _setStatus(status: IStatusMessage | null): void {
    this._status = status;
    this._changed.emit();
  }

  private _comm: StatusComm | null = null;
  private _reconnect = false;
  private _status: IStatusMessage | null = null;
  private _disposed = false;
  private _changed = new Signal<this, void>(this);
}
