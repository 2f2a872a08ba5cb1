/**
 * The kernel client: the `rexec.status` comm between a notebook's kernel and Lab.
 *
 * The kernel side (the "Rexec (remote)" kernel, or any IPython kernel that loaded
 * `rexec_magics`) pushes the remote worker's state over this comm and answers actions
 * (restart the worker, fetch its log, change its environment). The extension talks to no
 * server of its own: every byte goes through the kernel connection Lab already has, so
 * no server URL is built here. The message shapes are documented in docs/jupyterlab.md.
 */

import { Kernel, KernelMessage } from '@jupyterlab/services';
import { PromiseDelegate, UUID } from '@lumino/coreutils';
import { ISignal, Signal } from '@lumino/signaling';

/** The comm target both sides register. */
export const COMM_TARGET = 'rexec.status';

/** The kernelspec name of the "Rexec (remote)" kernel. */
export const REXEC_KERNEL_NAME = 'rexec';

/** Worker states shown to the user. */
export type WorkerState = 'starting' | 'ready' | 'busy' | 'dead' | 'not connected';

/** The worker's identity, as it reported at registration. */
export interface IWorkerInfo {
  name?: string;
  pid?: number;
  host?: string;
  python?: string;
  rexec?: string;
}

/** CPU and memory sampled on the worker. */
export interface IResources {
  cpu_percent?: number | null;
  rss_bytes?: number | null;
  mem_total_bytes?: number | null;
}

/** A `status` message: the whole state, sent on every change. */
export interface IStatusMessage {
  type: 'status';
  worker_state: WorkerState;
  detail: string;
  progress: string[];
  worker: IWorkerInfo | null;
  env_id: string | null;
  resources: IResources | null;
  error: string | null;
  source: 'kernel' | 'magics';
}

/** Messages answering an action, tied to it by `request`. */
export interface IOutputMessage {
  type: 'output';
  request: string;
  text: string;
}

export interface IDoneMessage {
  type: 'done';
  request: string;
  ok: boolean;
  message: string;
  text?: string;
}

export type KernelSideMessage = IStatusMessage | IOutputMessage | IDoneMessage;

/** Actions the panel can ask for. */
export type Action = 'restart' | 'log' | 'environment' | 'refresh';

/** The outcome of an action. */
export interface IActionResult {
  ok: boolean;
  message: string;
  text?: string;
}

/** Seconds an action may take before the panel stops waiting (pip installs are slow). */
const ACTION_TIMEOUT_MS: Record<Action, number> = {
  restart: 180_000,
  log: 30_000,
  environment: 900_000,
  refresh: 30_000
};

interface IPending {
  delegate: PromiseDelegate<IActionResult>;
  onOutput?: (text: string) => void;
  timer: ReturnType<typeof setTimeout>;
}

/**
 * The comm with one kernel connection: opens or adopts it, turns its messages into
 * `statusReceived` signals, and sends actions whose replies resolve promises.
 */
export class StatusComm {
  constructor(private readonly kernel: Kernel.IKernelConnection) {
    kernel.registerCommTarget(COMM_TARGET, this._adopt);
  }

  /** Emitted for every status message the kernel sends. */
  get statusReceived(): ISignal<this, IStatusMessage> {
    return this._statusReceived;
  }

  /** Emitted when the comm opens (true) or closes (false). */
  get connectedChanged(): ISignal<this, boolean> {
    return this._connectedChanged;
  }

  get connected(): boolean {
    return this._comm !== null;
  }

  /**
   * Open the comm from Lab when the kernel has the target: always for the Rexec kernel;
   * for other kernels only when one was opened before (magics loaded earlier, page
   * reloaded since), so plain Python kernels never log "no such comm target".
   */
  async connect(): Promise<boolean> {
    if (this._comm || this._disposed) {
      return this._comm !== null;
    }
    let known = this.kernel.name === REXEC_KERNEL_NAME;
    if (!known) {
      const reply = await this.kernel.requestCommInfo({ target_name: COMM_TARGET });
      const content = reply.content;
      known = content.status === 'ok' && Object.keys(content.comms).length > 0;
    }
    if (!known || this._comm || this._disposed) {
      return this._comm !== null;
    }
    const comm = this.kernel.createComm(COMM_TARGET);
    this._attach(comm);
    await comm.open({}).done;
    return true;
  }

  /** Ask the kernel side for `action`; `onOutput` receives streamed progress text. */
  request(
    action: Action,
    args: Record<string, string | number> = {},
    onOutput?: (text: string) => void
  ): Promise<IActionResult> {
    const comm = this._comm;
    if (!comm) {
      return Promise.resolve({
        ok: false,
        message:
          'this kernel has no Rexec status channel; restart the kernel and try again'
      });
    }
    const request = UUID.uuid4();
    const delegate = new PromiseDelegate<IActionResult>();
    const timer = setTimeout(() => {
      this._settle(request, {
        ok: false,
        message: `no answer from the kernel after ${ACTION_TIMEOUT_MS[action] / 1000} s`
      });
    }, ACTION_TIMEOUT_MS[action]);
    this._pending.set(request, { delegate, onOutput, timer });
    comm.send({ action, request, ...args });
    return delegate.promise;
  }

  /** Forget the current comm (the kernel restarted); `connect()` opens a new one. */
  reset(): void {
    this._detach();
  }

  dispose(): void {
    if (this._disposed) {
      return;
    }
    this._disposed = true;
    this._detach();
    if (!this.kernel.isDisposed) {
      this.kernel.removeCommTarget(COMM_TARGET, this._adopt);
    }
    Signal.clearData(this);
  }

  private _adopt = (comm: Kernel.IComm): void => {
    // The kernel side opened the comm (the magics were just loaded): keep the newest one.
    this._detach();
    this._attach(comm);
  };

  private _attach(comm: Kernel.IComm): void {
    this._comm = comm;
    comm.onMsg = (msg: KernelMessage.ICommMsgMsg) => {
      this._handle(msg.content.data as unknown as KernelSideMessage);
    };
    comm.onClose = () => {
      if (this._comm === comm) {
        this._detach();
      }
    };
    this._connectedChanged.emit(true);
  }

  private _detach(): void {
    const comm = this._comm;
    this._comm = null;
    for (const request of [...this._pending.keys()]) {
      this._settle(request, {
        ok: false,
        message: 'the kernel closed the status channel'
      });
    }
    if (comm) {
      if (!comm.isDisposed) {
        comm.dispose();
      }
      this._connectedChanged.emit(false);
    }
  }

  private _handle(message: KernelSideMessage): void {
    if (!message || typeof message !== 'object') {
      return;
    }
    if (message.type === 'status') {
      this._statusReceived.emit(message);
    } else if (message.type === 'output') {
      this._pending.get(message.request)?.onOutput?.(message.text);
    } else if (message.type === 'done') {
      this._settle(message.request, {
        ok: message.ok,
        message: message.message,
        text: message.text
      });
    }
  }

  private _settle(request: string, result: IActionResult): void {
    const pending = this._pending.get(request);
    if (!pending) {
      return;
    }
    this._pending.delete(request);
    clearTimeout(pending.timer);
    pending.delegate.resolve(result);
  }

  private _comm: Kernel.IComm | null = null;
  private _disposed = false;
  private _pending = new Map<string, IPending>();
  private _statusReceived = new Signal<this, IStatusMessage>(this);
  private _connectedChanged = new Signal<this, boolean>(this);
}
